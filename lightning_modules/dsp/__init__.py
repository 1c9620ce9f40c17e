"""Signal processing: STFT/iSTFT, masks and Mel filter banks (``spectral``), and the Mel front
end module of the Mel models (``frontend``). Framing constants come from
``datamodules.conventions``."""
