"""The maths behind the image nodes, on IMAGE tensors [B,H,W,C] in 0..1 and MASK tensors [B,H,W]; no node
declarations here, so the formulas can be read and tested on their own."""
