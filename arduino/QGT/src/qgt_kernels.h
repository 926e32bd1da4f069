/* QGT kernel library: int8 inference with 1/2/4/8-bit packed weights (packed format version 3,
 * docs/FORMAT.md), TFLite-Micro's int8 semantics bit for bit.
 *
 * C99, no allocation, no global state, no floating point. Two implementations behind one API: portable C,
 * and a Cortex-M4 DSP path (SMLAD, SXTB16, SXTAB16) chosen when the compiler defines __ARM_FEATURE_DSP and
 * QGT_PORTABLE is not defined. The adapters (TFLite-Micro op glue, generated C model, host test bindings)
 * only translate into these calls:
 *
 *   once per layer (Prepare, or at generation time):
 *     qgt_layer_parse(op, options, blob)          -> qgt_layer  (validated views into the blob)
 *     qgt_conv_params_init / qgt_fc_params_init   -> qgt_conv_params, output dims (padding, offsets, clamps)
 *     qgt_quant_params_init                       -> qgt_quant_params (32 multipliers/shifts per layer)
 *     qgt_<op>_scratch_size                       -> bytes of scratch the kernel needs
 *   per inference:
 *     qgt_conv2d / qgt_depthwise_conv2d / qgt_fully_connected (..., scratch, scratch_bytes)
 *
 * plus what MobileNet needs besides: qgt_average_pool2d, qgt_softmax (with qgt_softmax_params_init) and
 * qgt_argmax. RESHAPE needs no kernel: the data of an int8 tensor is the same bytes in any shape.
 *
 * Every function validates its arguments and returns a status; on a status other than QGT_OK nothing has
 * been written to the output. Tensors are int8, NHWC, densely packed. Scales are passed as the bit patterns
 * of float32 values (uint32_t), so that no float is needed at run time. Scratch buffers must be 4-byte
 * aligned and hold at least *_scratch_size(...) bytes; their content need not be kept between calls.
 * docs/KERNELS.md describes the design, the in-place rules and how the library is tested.
 */
#ifndef QGT_KERNELS_H
#define QGT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The weight widths a build supports, bit b for b-bit codes (flash: each width has its own specialized
 * loops). Define it to fewer, e.g. -DQGT_WEIGHT_BITS_MASK=0x104 for 2- and 8-bit models; layers of other
 * widths are then refused with QGT_ERR_OPTIONS. */
#ifndef QGT_WEIGHT_BITS_MASK
#define QGT_WEIGHT_BITS_MASK ((1u << 1) | (1u << 2) | (1u << 4) | (1u << 8))
#endif
#define QGT_SUPPORTS_BITS(bits) (((bits) == 1 || (bits) == 2 || (bits) == 4 || (bits) == 8) && \
                                 ((QGT_WEIGHT_BITS_MASK >> (bits)) & 1u))

#define QGT_FORMAT_VERSION 3
#define QGT_OPTIONS_BYTES 21
#define QGT_FLAG_KEEP_NUM_DIMS 0x01u
#define QGT_FLAG_WORD_ROWS 0x02u
#define QGT_SCALE_STEPS 32 /* scale-code mantissas: a layer's multipliers depend on code % 32 only */

typedef enum {
  QGT_OK = 0,
  QGT_ERR_ARGUMENT = 1,   /* a NULL pointer, a misaligned buffer, or buffers that overlap unsafely */
  QGT_ERR_VERSION = 2,    /* a packed format version this library does not read */
  QGT_ERR_FLAGS = 3,      /* unknown flag bits, or the word-aligned-rows flag missing */
  QGT_ERR_OPTIONS = 4,    /* custom options of the wrong length or with a field out of range (or a weight
                             width this build leaves out: QGT_WEIGHT_BITS_MASK) */
  QGT_ERR_ACTIVATION = 5, /* a fused activation other than NONE, RELU, RELU_N1_TO_1, RELU6 */
  QGT_ERR_BLOB = 6,       /* a blob whose size or alignment does not match its options */
  QGT_ERR_SHAPE = 7,      /* dims zero, negative, overflowing, or inconsistent with the filter or each other */
  QGT_ERR_RANGE = 8,      /* a bias or an accumulator that could overflow int32 */
  QGT_ERR_SCALE = 9,      /* a scale that is not a positive finite float32, or outside what the op supports */
  QGT_ERR_SCRATCH = 10    /* scratch missing, misaligned or smaller than the *_scratch_size */
} qgt_status;

/* "QGT_OK", "QGT_ERR_VERSION", ... for messages. */
const char *qgt_status_name(qgt_status status);

typedef enum { QGT_OP_CONV_2D = 0, QGT_OP_DEPTHWISE_CONV_2D = 1, QGT_OP_FULLY_CONNECTED = 2 } qgt_op;

/* TFLite ActivationFunctionType values the kernels fuse. */
enum { QGT_ACT_NONE = 0, QGT_ACT_RELU = 1, QGT_ACT_RELU_N1_TO_1 = 2, QGT_ACT_RELU6 = 3 };
/* TFLite Padding values. */
enum { QGT_PADDING_SAME = 0, QGT_PADDING_VALID = 1 };

typedef struct {
  int32_t n, h, w, c;
} qgt_dims;

typedef struct {
  int32_t w, h;
} qgt_tile;

typedef struct {
  int32_t min, max;
} qgt_range;

/* Quantization of an int8 activation tensor: real = scale * (q - zero_point). */
typedef struct {
  uint32_t scale_bits; /* float32 bit pattern */
  int32_t zero_point;
} qgt_tensor_quant;

/* A packed filter: views into its (4-byte aligned) blob, filled by qgt_layer_parse. */
typedef struct {
  const uint8_t *weights;     /* rows of whole 32-bit words, 4-byte aligned */
  const uint8_t *bias;        /* out_channels stored biases of bias_bytes bytes */
  const uint8_t *scale_codes; /* out_channels scale codes */
  int32_t out_channels;
  int32_t kernel_h, kernel_w; /* 1 x 1 for fully connected */
  int32_t in_channels;        /* per output channel; depthwise: out_channels / depth_multiplier */
  int32_t row_length;         /* codes per row: kh*kw*in (conv), in (fc); kh*kw*out_channels (depthwise, 1 row) */
  int32_t row_bytes;          /* bytes per row, a multiple of 4 */
  uint8_t weight_bits;        /* 1, 2, 4 or 8 */
  uint8_t bias_bytes;         /* 1, 2 or 4 */
  uint8_t bias_shift;         /* 0..30 */
  int8_t scale_exponent;      /* -126..120 */
  uint8_t accumulator_bits;   /* every channel's worst case |acc + bias| < 2^accumulator_bits (<= 31) */
} qgt_filter;

/* One QGT custom op, as its options and blob describe it. */
typedef struct {
  qgt_op op;
  uint8_t activation;    /* QGT_ACT_* */
  uint8_t padding;       /* QGT_PADDING_* (SAME for fully connected) */
  uint8_t keep_num_dims; /* fully connected */
  qgt_tile stride;       /* 1 x 1 for fully connected */
  qgt_tile dilation;     /* 1 x 1 for fully connected */
  int32_t depth_multiplier; /* depthwise; 1 otherwise */
  qgt_filter filter;
} qgt_layer;

/* Validates a QGT op's custom options (QGT_OPTIONS_BYTES) and its blob (version, flags, widths, ranges,
 * shape/blob size consistency, 4-byte alignment, every bias and worst-case accumulator within int32) and
 * fills *layer with views into the blob. */
qgt_status qgt_layer_parse(qgt_op op, const uint8_t *options, size_t options_len, const uint8_t *blob,
                           size_t blob_len, qgt_layer *layer);

/* Per-layer requantization: entry k is QuantizeMultiplier(input_scale * SCALE_MANTISSAS[k] *
 * 2^scale_exponent / output_scale) before its clamps; channel c uses multiplier[code % 32] and shift
 * shift[code % 32] + code / 32, clamped as FORMAT.md says. */
typedef struct {
  int32_t multiplier[QGT_SCALE_STEPS];
  int16_t shift[QGT_SCALE_STEPS];
} qgt_quant_params;

/* The table above from the float32 bit patterns of the input and output scales, with integers only
 * (FORMAT.md, "Multipliers"). */
qgt_status qgt_quant_params_init(const qgt_filter *filter, uint32_t input_scale_bits, uint32_t output_scale_bits,
                                 qgt_quant_params *quant);

/* The float32 value SCALE_MANTISSAS[k] (nearest to 2^(k/32)) as a bit pattern, k = 0..31; 0 otherwise. */
uint32_t qgt_scale_mantissa_bits(int32_t k);

/* The clamp range of a fused activation on an int8 output tensor, as TFLite's
 * CalculateActivationRangeQuantized computes it in float32, with integers only. */
qgt_status qgt_activation_range(uint8_t activation, qgt_tensor_quant output, qgt_range *range);

/* Parameters of qgt_conv2d and qgt_depthwise_conv2d (CMSIS-NN's conv_params, plus the depth multiplier). */
typedef struct {
  int32_t input_offset;     /* -input zero point */
  int32_t output_offset;    /* output zero point */
  qgt_tile stride, padding, dilation; /* padding: rows/columns of zeros before the first input pixel */
  int32_t depth_multiplier; /* depthwise; 1 for conv */
  qgt_range activation;
} qgt_conv_params;

/* Output dims (TFLite's SAME / VALID sizes), padding, offsets and clamps of a conv or depthwise layer for an
 * NHWC input of *input_dims. */
qgt_status qgt_conv_params_init(const qgt_layer *layer, const qgt_dims *input_dims, qgt_tensor_quant input,
                                qgt_tensor_quant output, qgt_conv_params *params, qgt_dims *output_dims);

/* Fully connected: the input is input_dims->n rows of input_dims->c = filter in_channels values (flatten
 * the input tensor so: n = elements / in_channels); the output is n rows of out_channels. */
typedef struct {
  int32_t input_offset, output_offset;
  qgt_range activation;
} qgt_fc_params;

qgt_status qgt_fc_params_init(const qgt_layer *layer, int32_t input_elements, qgt_tensor_quant input,
                              qgt_tensor_quant output, qgt_fc_params *params, qgt_dims *input_dims,
                              qgt_dims *output_dims);

/* Convolution. The output may overlap the input only for a 1x1 filter with stride 1 and no padding, and
 * only where output + k * out_c <= input + k * in_c for every k = 1 .. n*h*w (pixels are consumed before
 * their bytes are overwritten; e.g. out_c <= in_c and output == input, or the input placed
 * n*h*w*(out_c - in_c) bytes after the output); otherwise QGT_ERR_ARGUMENT. */
size_t qgt_conv2d_scratch_size(const qgt_conv_params *params, const qgt_dims *input_dims, const qgt_filter *filter,
                               const qgt_dims *output_dims);
qgt_status qgt_conv2d(const qgt_conv_params *params, const qgt_quant_params *quant, const qgt_dims *input_dims,
                      const int8_t *input, const qgt_filter *filter, const qgt_dims *output_dims, int8_t *output,
                      void *scratch, size_t scratch_bytes);

/* Depthwise convolution. In place (output == input) is allowed whenever the output rows, written in order,
 * never cover input rows still to be read (true for every stride when the output is not larger than the
 * input, e.g. MobileNet's 3x3 layers); other overlaps are QGT_ERR_ARGUMENT. The scratch holds the rows of
 * the current window (so in place works) and, on the DSP path, the filter widened to 16 bits. */
size_t qgt_depthwise_conv2d_scratch_size(const qgt_conv_params *params, const qgt_dims *input_dims,
                                         const qgt_filter *filter, const qgt_dims *output_dims);
qgt_status qgt_depthwise_conv2d(const qgt_conv_params *params, const qgt_quant_params *quant,
                                const qgt_dims *input_dims, const int8_t *input, const qgt_filter *filter,
                                const qgt_dims *output_dims, int8_t *output, void *scratch, size_t scratch_bytes);

/* Fully connected (input_dims/output_dims from qgt_fc_params_init). Overlap as for a 1x1 conv. */
size_t qgt_fully_connected_scratch_size(const qgt_fc_params *params, const qgt_dims *input_dims,
                                        const qgt_filter *filter, const qgt_dims *output_dims);
qgt_status qgt_fully_connected(const qgt_fc_params *params, const qgt_quant_params *quant,
                               const qgt_dims *input_dims, const int8_t *input, const qgt_filter *filter,
                               const qgt_dims *output_dims, int8_t *output, void *scratch, size_t scratch_bytes);

/* AVERAGE_POOL_2D (input and output share scale and zero point, as TFLite requires): the rounded mean of
 * the window's valid input values, clamped. */
typedef struct {
  qgt_tile stride, padding, filter;
  qgt_range activation;
} qgt_pool_params;

qgt_status qgt_pool_params_init(uint8_t padding, qgt_tile stride, qgt_tile filter, uint8_t activation,
                                const qgt_dims *input_dims, qgt_tensor_quant output, qgt_pool_params *params,
                                qgt_dims *output_dims);
qgt_status qgt_average_pool2d(const qgt_pool_params *params, const qgt_dims *input_dims, const int8_t *input,
                              const qgt_dims *output_dims, int8_t *output);

/* SOFTMAX, int8 in and out (output scale 1/256, zero point -128, as TFLite requires), over the last axis:
 * bit for bit TFLite's reference int8 softmax (fixed-point exp and reciprocal). */
typedef struct {
  int32_t input_multiplier;
  int32_t input_left_shift;
  int32_t diff_min;
} qgt_softmax_params;

/* TFLite's PreprocessSoftmaxScaling and CalculateInputRadius with integers only. */
qgt_status qgt_softmax_params_init(uint32_t input_scale_bits, uint32_t beta_bits, qgt_tensor_quant output,
                                   qgt_softmax_params *params);
qgt_status qgt_softmax(const qgt_softmax_params *params, int32_t rows, int32_t depth, const int8_t *input,
                       int8_t *output);

/* ARG_MAX over the last axis: for each of rows rows of depth values, the index of the first largest one. */
qgt_status qgt_argmax(int32_t rows, int32_t depth, const int8_t *input, int32_t *output);

#ifdef __cplusplus
}
#endif

#endif /* QGT_KERNELS_H */
