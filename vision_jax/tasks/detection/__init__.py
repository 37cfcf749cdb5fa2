"""Object detection: Faster R-CNN (RPN + RoIAlign head) on a backbone; mAP at IoU 0.5."""
