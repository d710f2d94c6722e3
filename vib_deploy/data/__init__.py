"""Datasets: MNIST / Fashion-MNIST IDX files and their splits, and the user's own image folders and arrays."""
