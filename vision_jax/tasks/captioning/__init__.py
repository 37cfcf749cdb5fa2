"""Image captioning: a CNN encoder and an LSTM decoder (Show and Tell; Show, Attend and Tell); BLEU and CIDEr-D."""
