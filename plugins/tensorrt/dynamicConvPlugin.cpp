// IPluginV3 for dyconv::DynamicConv2d: shape/format negotiation with TensorRT, attribute (de)serialisation,
// and enqueue into dyconv::dynamic_conv2d. Every noexcept entry point catches and logs; nothing throws out.
#include "dynamicConvPlugin.h"

#include "dynamic_conv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <iostream>
#include <stdexcept>

using namespace nvinfer1;

namespace dyconv::trt
{
namespace
{

constexpr char const* kPluginName = "DynamicConv2d";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";
constexpr int32_t kMinInputs = 3; // X, A, W
constexpr int32_t kMaxInputs = 5; // + B, S
constexpr int32_t kExpectedRanks[kMaxInputs] = {4, 2, 5, 2, 3}; // A may also be rank 3 (DyNet)

// Set by setLoggerFinder, possibly while another thread logs (several builders in one process).
std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

void logError(char const* where, char const* message) noexcept
{
    std::string const text = std::string(kPluginName) + " plugin, " + where + ": " + message;
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, text.c_str());
    }
    else
    {
        std::cerr << text << std::endl;
    }
}

void checkInputs(int32_t nbInputs, int32_t nbOutputs)
{
    if (nbInputs < kMinInputs || nbInputs > kMaxInputs || nbOutputs != 1)
    {
        throw std::invalid_argument("expects 3 to 5 inputs (X, A, W[, B[, S]]) and 1 output, got "
            + std::to_string(nbInputs) + " inputs and " + std::to_string(nbOutputs) + " outputs");
    }
}

void checkRank(int32_t index, int32_t rank)
{
    bool const ok = rank == kExpectedRanks[index] || (index == 1 && rank == 3);
    if (!ok)
    {
        static char const* const names[kMaxInputs] = {"X", "A", "W", "B", "S"};
        throw std::invalid_argument(std::string("input ") + names[index] + " has rank " + std::to_string(rank)
            + ", expected " + std::to_string(kExpectedRanks[index]) + (index == 1 ? " or 3" : ""));
    }
}

// An extent of a build-time shape may be -1 (dynamic): it agrees with anything until it is known.
bool agree(int64_t actual, int64_t expected)
{
    return actual < 0 || expected < 0 || actual == expected;
}

void expectExtent(char const* tensor, int32_t axis, int64_t actual, int64_t expected, char const* what)
{
    if (!agree(actual, expected))
    {
        throw std::invalid_argument(std::string(tensor) + " dimension " + std::to_string(axis) + " is "
            + std::to_string(actual) + " but must be " + std::to_string(expected) + " (" + what + ")");
    }
}

//! A = [N, K] or [N, K, M], B = [K, M], S = [N, kH, kW] and C = group * C/group against X = [N, C, H, W] and
//! W = [K, M, C/group, kH, kW]; ranks are checked before. Unknown (-1) extents pass until they are known.
void checkShapes(Dims const* dims[], bool hasBias, bool hasSpatial, int32_t group)
{
    Dims const& x = *dims[0];
    Dims const& a = *dims[1];
    Dims const& w = *dims[2];
    expectExtent("A", 0, a.d[0], x.d[0], "X's batch N");
    expectExtent("A", 1, a.d[1], w.d[0], "W's experts K");
    if (a.nbDims == 3)
    {
        expectExtent("A", 2, a.d[2], w.d[1], "W's output channels M");
    }
    expectExtent("X", 1, x.d[1], w.d[2] < 0 ? -1 : w.d[2] * group, "W's C/group times group");
    if (w.d[1] >= 0 && w.d[1] % group != 0)
    {
        throw std::invalid_argument("W has " + std::to_string(w.d[1]) + " output channels, not a multiple of group "
            + std::to_string(group));
    }
    if (hasBias)
    {
        expectExtent("B", 0, dims[3]->d[0], w.d[0], "W's experts K");
        expectExtent("B", 1, dims[3]->d[1], w.d[1], "W's output channels M");
    }
    if (hasSpatial)
    {
        expectExtent("S", 0, dims[4]->d[0], x.d[0], "X's batch N");
        expectExtent("S", 1, dims[4]->d[1], w.d[3], "W's kernel height");
        expectExtent("S", 2, dims[4]->d[2], w.d[4], "W's kernel width");
    }
}

ConvShape convShape(ConvAttributes const& a, Dims const& x, Dims const& attention, Dims const& w)
{
    ConvShape s{};
    s.n = static_cast<int32_t>(x.d[0]);
    s.c = static_cast<int32_t>(x.d[1]);
    s.h = static_cast<int32_t>(x.d[2]);
    s.w = static_cast<int32_t>(x.d[3]);
    s.experts = static_cast<int32_t>(w.d[0]);
    s.m = static_cast<int32_t>(w.d[1]);
    s.kh = static_cast<int32_t>(w.d[3]);
    s.kw = static_cast<int32_t>(w.d[4]);
    s.groups = a.group;
    s.stride_h = a.strides[0];
    s.stride_w = a.strides[1];
    s.pad_top = a.pads[0];
    s.pad_left = a.pads[1];
    s.pad_bottom = a.pads[2];
    s.pad_right = a.pads[3];
    s.dilation_h = a.dilations[0];
    s.dilation_w = a.dilations[1];
    s.channel_attention = attention.nbDims == 3;
    return conv_shape(s);
}

// floor((size + pad_total - dilation * (kernel - 1) - 1) / stride) + 1 as a TensorRT shape expression.
IDimensionExpr const* outputExtent(IExprBuilder& b, IDimensionExpr const& size, IDimensionExpr const& kernel,
    int32_t padTotal, int32_t stride, int32_t dilation)
{
    auto const* grown = b.operation(DimensionOperation::kSUM, size, *b.constant(padTotal + dilation - 1));
    auto const* span = b.operation(DimensionOperation::kPROD, kernel, *b.constant(dilation));
    auto const* numerator = b.operation(DimensionOperation::kSUB, *grown, *span);
    auto const* steps = b.operation(DimensionOperation::kFLOOR_DIV, *numerator, *b.constant(stride));
    return b.operation(DimensionOperation::kSUM, *steps, *b.constant(1));
}

// The algorithms TensorRT may time for X's type and the profile's largest shapes `s` (the ones that apply to
// every shape of the profile: whether they apply depends on W and the attributes, not on the batch or the plane):
// depthwise when C/G == 1, both SIMT implicit GEMMs, and for fp16 the tensor-core ones this library and GPU have
// (cublas-pointwise for pointwise convs; on sm_80+ tensor-core-fused, tensor-core-aggregated and, with at most 64
// experts, tensor-core-experts). An fp32 engine gets no TF32 tactic: its plugin layers keep fp32 accuracy
// whatever the builder's TF32 flag (which a plugin cannot read).
std::vector<int32_t> validTactics(ConvShape const& s, DataType type)
{
    std::vector<Algo> candidates{Algo::kDepthwise, Algo::kGemmFused, Algo::kGemmAggregated};
    if (type == DataType::kHALF)
    {
        candidates.insert(candidates.end(),
            {Algo::kCublasPointwise, Algo::kTensorCoreFused, Algo::kTensorCoreAggregated, Algo::kTensorCoreExperts});
    }
    std::vector<int32_t> tactics;
    for (Algo const algo : candidates)
    {
        if (algo_applies(s, algo) && algo_available(algo) && validate(s, algo) == cudaSuccess)
        {
            tactics.push_back(static_cast<int32_t>(algo));
        }
    }
    return tactics;
}

void readInts(PluginField const& field, int32_t* destination, int32_t count)
{
    if (field.length != count || field.data == nullptr)
    {
        throw std::invalid_argument(std::string("attribute '") + field.name + "' needs " + std::to_string(count)
            + " ints, got " + std::to_string(field.length));
    }
    if (field.type == PluginFieldType::kINT32)
    {
        std::memcpy(destination, field.data, count * sizeof(int32_t));
    }
    else if (field.type == PluginFieldType::kINT64)
    {
        auto const* values = static_cast<int64_t const*>(field.data);
        std::transform(values, values + count, destination, [](int64_t v) { return static_cast<int32_t>(v); });
    }
    else
    {
        throw std::invalid_argument(std::string("attribute '") + field.name + "' must be int32 or int64");
    }
}

ConvAttributes parseAttributes(PluginFieldCollection const* fc)
{
    ConvAttributes a;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        std::string const name = field.name != nullptr ? field.name : "";
        if (name == "strides")
        {
            readInts(field, a.strides, 2);
        }
        else if (name == "pads")
        {
            readInts(field, a.pads, 4);
        }
        else if (name == "dilations")
        {
            readInts(field, a.dilations, 2);
        }
        else if (name == "group")
        {
            readInts(field, &a.group, 1);
        }
        else if (name == "workspace_bytes" && field.type == PluginFieldType::kINT64 && field.length == 1)
        {
            a.workspace_bytes = *static_cast<int64_t const*>(field.data);
        }
        else if (name == "tactic")
        {
            readInts(field, &a.tactic, 1);
            if (!is_algo(a.tactic))
            {
                throw std::invalid_argument("serialised tactic " + std::to_string(a.tactic)
                    + " is not a dyconv::Algo value");
            }
        }
    }
    bool const valid = a.strides[0] > 0 && a.strides[1] > 0 && a.dilations[0] > 0 && a.dilations[1] > 0
        && a.group > 0 && std::all_of(a.pads, a.pads + 4, [](int32_t p) { return p >= 0; }) && a.workspace_bytes >= 0;
    if (!valid)
    {
        throw std::invalid_argument("strides, dilations and group must be positive, pads and workspace_bytes "
                                    "non-negative");
    }
    return a;
}

} // namespace

DynamicConv2dPlugin::DynamicConv2dPlugin(ConvAttributes const& attributes)
    : mAttributes(attributes)
{
    bindFields();
}

DynamicConv2dPlugin::DynamicConv2dPlugin(DynamicConv2dPlugin const& other)
    : mAttributes(other.mAttributes)
    , mHasBias(other.mHasBias)
    , mHasSpatial(other.mHasSpatial)
    , mTactics(other.mTactics)
{
    bindFields();
}

void DynamicConv2dPlugin::bindFields()
{
    ConvAttributes const& a = mAttributes;
    mFields = {
        PluginField("strides", a.strides, PluginFieldType::kINT32, 2),
        PluginField("pads", a.pads, PluginFieldType::kINT32, 4),
        PluginField("dilations", a.dilations, PluginFieldType::kINT32, 2),
        PluginField("group", &a.group, PluginFieldType::kINT32, 1),
        PluginField("workspace_bytes", &a.workspace_bytes, PluginFieldType::kINT64, 1),
        PluginField("tactic", &a.tactic, PluginFieldType::kINT32, 1),
    };
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    mTimingCacheId = "s" + std::to_string(a.strides[0]) + "x" + std::to_string(a.strides[1]) + "_p"
        + std::to_string(a.pads[0]) + "," + std::to_string(a.pads[1]) + "," + std::to_string(a.pads[2]) + ","
        + std::to_string(a.pads[3]) + "_d" + std::to_string(a.dilations[0]) + "x" + std::to_string(a.dilations[1])
        + "_g" + std::to_string(a.group);
    // Which tactics this library and GPU offer (a timing cache made with cuBLAS or on sm_80+ does not apply here
    // otherwise).
    for (Algo const algo : {Algo::kCublasPointwise, Algo::kTensorCoreFused, Algo::kTensorCoreAggregated,
             Algo::kTensorCoreExperts})
    {
        mTimingCacheId += algo_available(algo) ? "_" + std::to_string(static_cast<int32_t>(algo)) : "";
    }
}

void DynamicConv2dPlugin::setOptionalInputs(int32_t nbInputs, Dims const* dims[])
{
    bool present[kMaxInputs]{};
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        present[i] = i < kMinInputs || dims[i]->nbDims > 0;
        if (present[i])
        {
            checkRank(i, dims[i]->nbDims);
        }
    }
    mHasBias = present[3];
    mHasSpatial = present[4];
}

IPluginCapability* DynamicConv2dPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* DynamicConv2dPlugin::clone() noexcept
{
    try
    {
        return new DynamicConv2dPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError("clone", e.what());
    }
    return nullptr;
}

char const* DynamicConv2dPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DynamicConv2dPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DynamicConv2dPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t DynamicConv2dPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t DynamicConv2dPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        checkInputs(nbInputs, nbOutputs);
        Dims const* dims[kMaxInputs]{};
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = &in[i].desc.dims;
        }
        setOptionalInputs(nbInputs, dims);
        checkShapes(dims, mHasBias, mHasSpatial, mAttributes.group);
        for (auto bound : {&DynamicPluginTensorDesc::min, &DynamicPluginTensorDesc::max}) // the profile's range
        {
            for (int32_t i = 0; i < nbInputs; ++i)
            {
                dims[i] = &(in[i].*bound);
            }
            checkShapes(dims, mHasBias, mHasSpatial, mAttributes.group);
        }
        mTactics = validTactics(convShape(mAttributes, in[0].max, in[1].max, in[2].max), in[0].desc.type);
        mAttributes.workspace_bytes = static_cast<int64_t>(getWorkspaceSize(in, nbInputs, out, nbOutputs));
        return 0;
    }
    catch (std::exception const& e)
    {
        report("configurePlugin", e.what());
    }
    return -1;
}

int32_t DynamicConv2dPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs < kMinInputs)
    {
        logError("getOutputDataTypes", "expects at least 3 inputs and 1 output");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t DynamicConv2dPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    try
    {
        checkInputs(nbInputs, nbOutputs);
        checkRank(0, inputs[0].nbDims);
        checkRank(2, inputs[2].nbDims);
        DimsExprs const& x = inputs[0];
        DimsExprs const& w = inputs[2];
        ConvAttributes const& a = mAttributes;
        outputs[0].nbDims = 4;
        outputs[0].d[0] = x.d[0];
        outputs[0].d[1] = w.d[1];
        for (int32_t axis = 0; axis < 2; ++axis)
        {
            outputs[0].d[2 + axis] = outputExtent(exprBuilder, *x.d[2 + axis], *w.d[3 + axis],
                a.pads[axis] + a.pads[axis + 2], a.strides[axis], a.dilations[axis]);
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError("getOutputShapes", e.what());
    }
    return -1;
}

bool DynamicConv2dPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (pos >= kMinInputs && pos < nbInputs && desc.dims.nbDims <= 0)
    {
        return true; // an absent optional input: nothing is read from it
    }
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    }
    return desc.type == inOut[0].desc.type;
}

size_t DynamicConv2dPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    if (nbInputs < kMinInputs)
    {
        return 0;
    }
    // Sized at the profile's largest shapes (select_algo does not depend on the batch) for the default tactic
    // (kAuto) and every valid one, whichever TensorRT picks. configurePlugin keeps the value for enqueue, which
    // passes it on as the bytes available (the kernels refuse a plan that needs more).
    ConvShape const s = convShape(mAttributes, inputs[0].max, inputs[1].max, inputs[2].max);
    size_t bytes = workspace_size(s);
    for (int32_t const tactic : validTactics(s, inputs[0].desc.type))
    {
        bytes = std::max(bytes, workspace_size(s, static_cast<Algo>(tactic)));
    }
    return bytes;
}

int32_t DynamicConv2dPlugin::getNbTactics() noexcept
{
    return static_cast<int32_t>(mTactics.size());
}

int32_t DynamicConv2dPlugin::getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept
{
    if (nbTactics != static_cast<int32_t>(mTactics.size()) || (nbTactics > 0 && tactics == nullptr))
    {
        report("getValidTactics", "asked for a number of tactics other than getNbTactics()");
        return -1;
    }
    std::copy(mTactics.begin(), mTactics.end(), tactics);
    return 0;
}

int32_t DynamicConv2dPlugin::setTactic(int32_t tactic) noexcept
{
    if (!is_algo(tactic))
    {
        report("setTactic", ("tactic " + std::to_string(tactic) + " is not a dyconv::Algo value").c_str());
        return -1;
    }
    mAttributes.tactic = tactic;
    return 0;
}

char const* DynamicConv2dPlugin::getTimingCacheID() noexcept
{
    return mTimingCacheId.c_str();
}

int32_t DynamicConv2dPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    try
    {
        checkInputs(nbInputs, nbOutputs);
        Dims const* dims[kMaxInputs]{};
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = &in[i].dims;
        }
        setOptionalInputs(nbInputs, dims);
        checkShapes(dims, mHasBias, mHasSpatial, mAttributes.group);
        auto const algo = static_cast<Algo>(mAttributes.tactic);
        ConvShape const shape = convShape(mAttributes, in[0].dims, in[1].dims, in[2].dims);
        if (!algo_applies(shape, algo) || !algo_available(algo))
        {
            throw std::invalid_argument(std::string("tactic ") + algo_name(algo) + " does not apply to these shapes "
                + "or is not available here (a library without cuBLAS, or a GPU below sm_80 for the tensor-core-* paths)");
        }
        if (validate(shape, algo) != cudaSuccess)
        {
            throw std::invalid_argument("the output is empty or exceeds the launch grid for these shapes and "
                                        "attributes");
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        report("onShapeChange", e.what());
    }
    return -1;
}

int32_t DynamicConv2dPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    ConvShape const shape = convShape(mAttributes, inputDesc[0].dims, inputDesc[1].dims, inputDesc[2].dims);
    ConvTensors const tensors{inputs[0], inputs[1], inputs[2], mHasBias ? inputs[3] : nullptr,
        mHasSpatial ? inputs[4] : nullptr, outputs[0]};
    DType const dtype = inputDesc[0].type == DataType::kHALF ? DType::kFloat16 : DType::kFloat32;
    // TensorRT's allocation, not a size recomputed here: on another GPU the kernels may plan differently.
    auto const available = static_cast<size_t>(mAttributes.workspace_bytes);
    cudaError_t const status
        = dynamic_conv2d(shape, dtype, tensors, workspace, available, stream, static_cast<Algo>(mAttributes.tactic));
    if (status != cudaSuccess)
    {
        report("enqueue", cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* DynamicConv2dPlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    auto* attached = static_cast<DynamicConv2dPlugin*>(clone());
    if (attached != nullptr && context != nullptr)
    {
        attached->mErrorRecorder = context->getErrorRecorder();
    }
    return attached;
}

void DynamicConv2dPlugin::report(char const* where, char const* message) const noexcept
{
    if (mErrorRecorder == nullptr)
    {
        logError(where, message);
        return;
    }
    try
    {
        std::string const text = std::string(kPluginName) + " plugin, " + where + ": " + message;
        mErrorRecorder->reportError(ErrorCode::kINVALID_ARGUMENT, text.c_str());
    }
    catch (std::exception const&)
    {
        logError(where, message);
    }
}

PluginFieldCollection const* DynamicConv2dPlugin::getFieldsToSerialize() noexcept
{
    return &mFieldCollection;
}

DynamicConv2dPluginCreator::DynamicConv2dPluginCreator()
    : mFieldNames{
        PluginField("strides", nullptr, PluginFieldType::kINT32, 2),
        PluginField("pads", nullptr, PluginFieldType::kINT32, 4),
        PluginField("dilations", nullptr, PluginFieldType::kINT32, 2),
        PluginField("group", nullptr, PluginFieldType::kINT32, 1),
    }
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* DynamicConv2dPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DynamicConv2dPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DynamicConv2dPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* DynamicConv2dPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* DynamicConv2dPluginCreator::createPlugin(
    char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    try
    {
        return new DynamicConv2dPlugin(parseAttributes(fc));
    }
    catch (std::exception const& e)
    {
        logError("createPlugin", e.what());
    }
    return nullptr;
}

} // namespace dyconv::trt

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    if (finder != nullptr) // a null finder keeps the one TensorRT gave before (as NVIDIA's plugin libraries do)
    {
        dyconv::trt::gLoggerFinder.store(finder);
    }
}

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static dyconv::trt::DynamicConv2dPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
