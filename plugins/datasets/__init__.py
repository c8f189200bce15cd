"""Built-in dataset plugins: digits, MNIST, CIFAR-10, ImageNet and synthetic data.

They show the two ways a dataset plugin can hand its data to benchbnn:

* small data sets (``digits``, ``mnist``, ``cifar10``, ``synthetic``) return every image of a
  split as a uint8 tensor (:class:`benchbnn.data.ImageTensors`) from a ``tensors``
  function; files are read through :func:`benchbnn.data.cached_tensors` so that they are
  decoded once, and the host's in-memory pipeline batches, augments and normalizes them;
* large data sets (``imagenet``) return a torch ``Dataset`` from a ``loader`` function that
  applies its own transforms, and the host reads it with DataLoader workers.

Every problem with the files on disk raises :class:`benchbnn.core.errors.DataError` naming the path,
the layout expected and how to obtain the data.
"""
