"""Data: readers/writers (io/), transforms, datasets, DataModules and data sources."""
