"""Development tools, not imported by the package's runtime: real ``redis-server``
processes for demos, benchmarks and tests."""
