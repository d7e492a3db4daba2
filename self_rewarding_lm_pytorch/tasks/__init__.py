"""Small verifiable tasks bundled with the library: offline data for the quickstart and the learning tests."""
