"""The data layer: sources -> records -> pools -> mixtures (with manifests)."""
