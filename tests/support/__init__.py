"""Test support shared by tests/, spec/ and bench/: real components for tests to run against."""
