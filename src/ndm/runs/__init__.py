"""The run machinery, a client of the library: configuration, training, the run folder and
its checkpoints, distributed processes, loggers and export."""
