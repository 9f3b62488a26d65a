"""HTTP routes beside OIP's: health and metrics, classify, statistics, repository control."""
