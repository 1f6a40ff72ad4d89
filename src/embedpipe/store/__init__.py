"""The store stage: the LanceDB table, its storage, its readers, its lock and its vector cache."""
