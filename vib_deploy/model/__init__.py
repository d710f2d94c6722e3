"""The network: VIB gates, layers as data, the dependency graph that places gates, and where a net comes from."""
