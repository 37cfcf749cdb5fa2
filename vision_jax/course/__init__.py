"""The course notes' demonstrations: pixels, convolution by hand, classic filters, max pooling, X vs O."""
