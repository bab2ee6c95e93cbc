"""CIFAR-sized classifiers."""
