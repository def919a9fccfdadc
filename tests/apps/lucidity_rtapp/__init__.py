"""The test app of the runtime's integration tests (`lucidity-gen` runs on a copy)."""
