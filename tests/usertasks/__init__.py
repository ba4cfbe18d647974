"""A user's own evaluation tasks, as a package outside sftmix would define them (tests only)."""
