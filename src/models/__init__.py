"""Networks (nets/, pure torch), the LightningModules of each task and the checkpoint loader."""
