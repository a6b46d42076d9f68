"""Finding and loading models: folders, checkpoints, VAEs, LoRAs."""
