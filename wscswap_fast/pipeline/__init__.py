"""Inference: detect -> align -> swap -> paste back, for images, video and webcam."""
