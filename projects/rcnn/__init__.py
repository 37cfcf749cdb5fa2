"""R-CNN (Girshick et al. 2014), the reference: selective search, warped crops, a CNN and class-specific box regression."""
