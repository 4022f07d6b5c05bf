"""Applications on top of the library: the command line, the demo, jobs, data loaders, plots.

Nothing in the library core imports this package."""
