"""Image classification: softmax cross-entropy on a backbone's logits; top-1/top-5 accuracy."""
