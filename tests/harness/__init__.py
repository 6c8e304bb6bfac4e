"""The harness's own tests (the load driver, the Service stand-in), without Ray."""
