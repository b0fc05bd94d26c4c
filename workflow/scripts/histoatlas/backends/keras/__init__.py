"""The Keras backend (TensorFlow): Keras 3 ``.keras`` files, legacy Keras 2 ``.h5`` files and
SavedModels, activations through one sub-model, gradients through ``tf.GradientTape``, the
demo CNN in Keras and its training loop. The only package that imports TensorFlow."""
