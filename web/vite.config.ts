import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// The bundle is committed and CI rebuilds it and compares: keep the output byte-for-byte stable
// (fixed file names, no timestamps, no source maps).
export default defineConfig({
  base: './',
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    assetsInlineLimit: 0,
    rolldownOptions: {
      output: {
        entryFileNames: 'assets/app.js',
        chunkFileNames: 'assets/[name].js',
        assetFileNames: 'assets/[name][extname]',
      },
    },
  },
  server: {
    fs: { allow: ['..'] },
    proxy: Object.fromEntries(
      ['/object_info', '/prompt', '/queue', '/interrupt', '/history', '/view', '/upload', '/ws'].map(
        (p) => [p, { target: process.env.NODEGRAPH_URL ?? 'http://127.0.0.1:8188', ws: p === '/ws' }],
      ),
    ),
  },
});
