"""The Ray Serve application: HTTP routes, a transport-free data plane, a model holder."""
