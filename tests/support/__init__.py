"""Real servers for tests: SeaweedFS (S3) and Azurite (Azure Blob), on loopback only."""
