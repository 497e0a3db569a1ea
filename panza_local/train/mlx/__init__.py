"""The mlx training backend (Apple Silicon; mlx[cpu] on Linux)."""
