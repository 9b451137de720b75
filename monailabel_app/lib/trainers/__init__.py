"""Train tasks: build their data from the datastore and publish heads atomically."""
