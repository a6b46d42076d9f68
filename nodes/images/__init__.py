"""Images: loading, saving, previewing and resizing pictures."""
