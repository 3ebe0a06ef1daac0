"""Device simulators that behave like real transmitters; used by tests, benchmarks, installers."""
