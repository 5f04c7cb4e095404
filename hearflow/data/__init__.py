"""From prepared files to model inputs: the prepared layout, annotations, transforms, dataset."""
