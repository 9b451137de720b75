"""One ``TaskConfig`` per served task; the module name is the task name (``--conf models``)."""
