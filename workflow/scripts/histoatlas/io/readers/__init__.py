"""Region readers beyond OpenSlide, and the choice between them.

``tiled_jpeg`` is the decode-once reader of JPEG-tiled TIFF pyramids (Aperio SVS, generic
and Philips TIFF); ``tiff_levels`` maps OpenSlide's levels onto TIFF pages and says which
the reader takes; ``tile_compose`` reproduces OpenSlide's compositing of a region from its
source tiles, bit for bit; ``choice`` picks the reader per slide and level
(``tiles.reader``); ``jpeg_streams`` makes complete JPEG streams of the tiles and plans a
batch for a device decoder (the device half is ``histoatlas.backends.torch.jpeg_decode``).
"""
