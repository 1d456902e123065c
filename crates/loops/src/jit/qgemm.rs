//! Quantized GEMV / small-M GEMM (VNNI); see the module docs once implemented.
