// npylstm: the LSTM gate math shared by every CUDA kernel (placeholder until the CUDA issue lands).
#pragma once
