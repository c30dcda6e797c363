"""pgdr's benchmark harness (not part of the default test suite): see bench/README.md."""
