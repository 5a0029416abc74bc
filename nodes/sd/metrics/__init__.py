"""The maths of the evaluation metric nodes (nodes/metrics/): feature networks (FID's Inception-v3, LPIPS), the
reference-folder feature cache, set statistics (FID, KID, IS, precision/recall) and text-image agreement."""
