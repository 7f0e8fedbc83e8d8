// Host-side check of libdyconv_trt_plugin.so without TensorRT or a GPU: loads the library with dlopen and
// drives the creator and plugin through the IPluginV3 interfaces (everything but enqueue, which needs a device;
// getOutputShapes runs against a constant-folding stand-in for TensorRT's expression builder).
// Usage: plugin_host_check <path/to/libdyconv_trt_plugin.so>; prints one line per check, exit 1 on failure.
#include "NvInferRuntime.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <dlfcn.h>
#include <iostream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::cout << (ok ? "ok      " : "FAILED  ") << what << std::endl;
    gFailures += ok ? 0 : 1;
}

DynamicPluginTensorDesc tensorDesc(std::vector<int64_t> const& dims, DataType type)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    d.min = d.opt = d.max = d.desc.dims;
    return d;
}

// Constant shape expressions: what getOutputShapes sees for fully known input shapes.
class ConstantExpr : public IDimensionExpr
{
    struct Impl : apiv::VDimensionExpr
    {
        int64_t value;
        bool isConstant() const override { return true; }
        int64_t getConstantValue() const override { return value; }
        bool isSizeTensor() const override { return false; }
    } mValue;

public:
    explicit ConstantExpr(int64_t value)
    {
        mValue.value = value;
        mImpl = &mValue;
    }
};

class FoldingExprBuilder : public IExprBuilder
{
    struct Impl : apiv::VExprBuilder
    {
        std::deque<ConstantExpr> exprs;

        IDimensionExpr const* constant(int64_t value) override { return &exprs.emplace_back(value); }
        IDimensionExpr const* operation(
            DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
        {
            int64_t const x = a.getConstantValue();
            int64_t const y = b.getConstantValue();
            switch (op)
            {
            case DimensionOperation::kSUM: return constant(x + y);
            case DimensionOperation::kPROD: return constant(x * y);
            case DimensionOperation::kSUB: return constant(x - y);
            case DimensionOperation::kFLOOR_DIV: return constant(x >= 0 ? x / y : -((-x + y - 1) / y));
            default: return nullptr;
            }
        }
        IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
        {
            return nullptr;
        }
    } mBuilder;

public:
    FoldingExprBuilder()
    {
        mImpl = &mBuilder;
    }

    DimsExprs dims(std::vector<int64_t> const& extents)
    {
        DimsExprs d{};
        d.nbDims = static_cast<int32_t>(extents.size());
        for (size_t i = 0; i < extents.size(); ++i)
        {
            d.d[i] = constant(extents[i]);
        }
        return d;
    }
};

// What TensorRT hands a plugin in attachToContext: here only an error recorder that keeps what it is given.
class RecordingErrorRecorder : public IErrorRecorder
{
public:
    std::vector<std::pair<ErrorCode, std::string>> errors;

    int32_t getNbErrors() const noexcept override { return static_cast<int32_t>(errors.size()); }
    ErrorCode getErrorCode(int32_t i) const noexcept override { return errors[i].first; }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override { return errors[i].second.c_str(); }
    bool hasOverflowed() const noexcept override { return false; }
    void clear() noexcept override { errors.clear(); }
    bool reportError(ErrorCode code, ErrorDesc desc) noexcept override
    {
        errors.emplace_back(code, desc);
        return true;
    }
    RefCount incRefCount() noexcept override { return 1; }
    RefCount decRefCount() noexcept override { return 0; }
};

class RecorderContext : public IPluginResourceContext
{
public:
    explicit RecorderContext(IErrorRecorder* recorder)
        : mRecorder(recorder)
    {
    }
    IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    IErrorRecorder* getErrorRecorder() const noexcept override { return mRecorder; }

private:
    IErrorRecorder* mRecorder;
};

class RecordingLogger : public ILogger
{
public:
    std::vector<std::string> errors;
    void log(Severity severity, AsciiChar const* message) noexcept override
    {
        if (severity == Severity::kERROR)
        {
            errors.emplace_back(message);
        }
    }
};

class FixedLoggerFinder : public ILoggerFinder
{
public:
    explicit FixedLoggerFinder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ILogger* findLogger() noexcept override { return mLogger; }

private:
    ILogger* mLogger;
};

std::vector<int32_t> fieldInts(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0 && fc->fields[i].type == PluginFieldType::kINT32)
        {
            auto const* data = static_cast<int32_t const*>(fc->fields[i].data);
            return {data, data + fc->fields[i].length};
        }
    }
    return {};
}

int64_t fieldInt64(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0 && fc->fields[i].type == PluginFieldType::kINT64
            && fc->fields[i].length == 1)
        {
            return *static_cast<int64_t const*>(fc->fields[i].data);
        }
    }
    return -1;
}

std::vector<int32_t> tactics(IPluginV3* plugin)
{
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    std::vector<int32_t> values(static_cast<size_t>(std::max(build->getNbTactics(), 0)));
    if (build->getValidTactics(values.data(), static_cast<int32_t>(values.size())) != 0)
    {
        return {-1};
    }
    return values;
}

// `values` is `required` followed by any of `optional` (tactics this library or GPU may or may not have).
bool tacticsAre(std::vector<int32_t> const& values, std::vector<int32_t> const& required,
    std::vector<int32_t> const& optional)
{
    if (values.size() < required.size() || !std::equal(required.begin(), required.end(), values.begin()))
    {
        return false;
    }
    return std::all_of(values.begin() + static_cast<std::ptrdiff_t>(required.size()), values.end(),
        [&](int32_t v) { return std::find(optional.begin(), optional.end(), v) != optional.end(); });
}

int32_t tacticOf(IPluginV3* plugin)
{
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::vector<int32_t> const value = fieldInts(runtime->getFieldsToSerialize(), "tactic");
    return value.size() == 1 ? value[0] : -1;
}

void checkAttributes(IPluginV3* plugin, std::string const& label)
{
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    using Ints = std::vector<int32_t>;
    check(fieldInts(fc, "strides") == Ints{2, 1} && fieldInts(fc, "pads") == Ints{1, 0, 0, 1}
            && fieldInts(fc, "dilations") == Ints{1, 2} && fieldInts(fc, "group") == Ints{2},
        label + ": serialised fields carry the node attributes");
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::cerr << "usage: plugin_host_check <libdyconv_trt_plugin.so>\n";
        return 2;
    }
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
    {
        std::cerr << "cannot load " << argv[1] << ": " << dlerror() << "\n";
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    check(getCreators != nullptr && dlsym(library, "setLoggerFinder") != nullptr,
        "exports getCreators and setLoggerFinder");
    if (getCreators == nullptr)
    {
        return 1;
    }
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(nbCreators == 1 && std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
        "one IPluginCreatorV3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::string(creator->getPluginName()) == "DynamicConv2d" && std::string(creator->getPluginVersion()) == "1"
            && std::string(creator->getPluginNamespace()).empty(),
        "creator is DynamicConv2d, version 1, namespace \"\"");
    PluginFieldCollection const* names = creator->getFieldNames();
    check(names->nbFields == 4 && std::strcmp(names->fields[1].name, "pads") == 0 && names->fields[1].length == 4,
        "field names: strides, pads (4), dilations, group");

    int32_t const strides[] = {2, 1};
    int32_t const pads[] = {1, 0, 0, 1};
    int64_t const dilations[] = {1, 2}; // int64 fields are accepted too
    int32_t const group = 2;
    std::vector<PluginField> fields{PluginField("strides", strides, PluginFieldType::kINT32, 2),
        PluginField("pads", pads, PluginFieldType::kINT32, 4),
        PluginField("dilations", dilations, PluginFieldType::kINT64, 2),
        PluginField("group", &group, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = creator->createPlugin("node", &fc, TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin from ONNX-parser fields");
    if (plugin == nullptr)
    {
        return 1;
    }
    check(plugin->getCapabilityInterface(PluginCapabilityType::kCORE) != nullptr
            && plugin->getCapabilityInterface(PluginCapabilityType::kBUILD) != nullptr
            && plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME) != nullptr,
        "core, build and runtime capabilities");
    checkAttributes(plugin, "created plugin");

    IPluginV3* cloned = plugin->clone();
    checkAttributes(cloned, "clone");
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    IPluginV3* restored = creator->createPlugin("node", runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "createPlugin from serialised fields");
    if (restored != nullptr)
    {
        checkAttributes(restored, "deserialised plugin");
    }

    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    std::vector<DynamicPluginTensorDesc> io{tensorDesc({8, 16, 32, 32}, DataType::kFLOAT),
        tensorDesc({8, 4}, DataType::kFLOAT), tensorDesc({4, 32, 8, 3, 3}, DataType::kFLOAT),
        tensorDesc({4, 32}, DataType::kFLOAT), tensorDesc({8, 16, 16, 32}, DataType::kFLOAT)};
    check(build->getNbOutputs() == 1, "one output");
    FoldingExprBuilder exprs;
    DimsExprs const shapes[] = {exprs.dims({8, 16, 32, 32}), exprs.dims({8, 4}), exprs.dims({4, 32, 8, 3, 3})};
    DimsExprs output{};
    bool const shaped = build->getOutputShapes(shapes, 3, nullptr, 0, &output, 1, exprs) == 0;
    // Ho = (32 + 1 + 0 - 1 * 2 - 1) / 2 + 1 = 16, Wo = (32 + 0 + 1 - 2 * 2 - 1) / 1 + 1 = 29.
    auto const extent = [&output](int32_t i) { return output.d[i]->getConstantValue(); };
    check(shaped && output.nbDims == 4 && extent(0) == 8 && extent(1) == 32 && extent(2) == 16 && extent(3) == 29,
        "getOutputShapes: [N, M, Ho, Wo] from X, W and the attributes");
    check(build->supportsFormatCombination(0, io.data(), 4, 1), "fp32 linear X accepted");
    io[1].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(1, io.data(), 4, 1), "A must have X's type");
    io[0].desc.type = DataType::kINT8;
    check(!build->supportsFormatCombination(0, io.data(), 4, 1), "int8 X rejected");
    io[0].desc.type = io[1].desc.type = DataType::kFLOAT;
    DataType outputType{};
    DataType const inputTypes[] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
    check(build->getOutputDataTypes(&outputType, 1, inputTypes, 3) == 0 && outputType == DataType::kHALF,
        "output type follows X");
    check(build->configurePlugin(io.data(), 4, &io[4], 1) == 0, "configurePlugin with X, A, W, B");
    std::vector<DynamicPluginTensorDesc> odconv{io[0], io[1], io[2], tensorDesc({}, DataType::kFLOAT),
        tensorDesc({8, 3, 3}, DataType::kFLOAT)};
    check(build->configurePlugin(odconv.data(), 5, &io[4], 1) == 0, "configurePlugin with S and an empty B");
    odconv[3].desc.type = DataType::kINT32;
    check(build->supportsFormatCombination(3, odconv.data(), 5, 1), "an empty B accepts any format");

    // Tactics (dyconv::Algo values) for the configured shape and type: both GEMMs always, depthwise for C/G == 1,
    // TF32/fp16 tensor-core ones for fp16 only (cublas-pointwise 4 for a pointwise conv when built with cuBLAS,
    // the WMMA paths tensor-core-fused 5, -aggregated 6 and -experts 7 on an sm_80+ GPU, so optional here).
    check(build->configurePlugin(io.data(), 4, &io[4], 1) == 0 && tactics(plugin) == std::vector<int32_t>{2, 3},
        "fp32 3x3 grouped conv: tactics gemm-fused, gemm-aggregated");
    std::vector<DynamicPluginTensorDesc> depthwise{tensorDesc({8, 2, 32, 32}, DataType::kHALF),
        tensorDesc({8, 4}, DataType::kHALF), tensorDesc({4, 32, 1, 3, 3}, DataType::kHALF)};
    check(build->configurePlugin(depthwise.data(), 3, &io[4], 1) == 0
            && tacticsAre(tactics(plugin), {1, 2, 3}, {5, 6, 7}),
        "fp16 depthwise conv: tactics depthwise, both GEMMs (+ the WMMA paths on sm_80+), no cublas-pointwise");
    IPluginV3* pointwise = creator->createPlugin("pw", nullptr, TensorRTPhase::kBUILD); // stride 1, no pads
    auto* pointwiseBuild
        = static_cast<IPluginV3OneBuild*>(pointwise->getCapabilityInterface(PluginCapabilityType::kBUILD));
    std::vector<DynamicPluginTensorDesc> pw{tensorDesc({8, 16, 8, 8}, DataType::kFLOAT),
        tensorDesc({8, 4}, DataType::kFLOAT), tensorDesc({4, 32, 16, 1, 1}, DataType::kFLOAT)};
    check(pointwiseBuild->configurePlugin(pw.data(), 3, &io[4], 1) == 0
            && tactics(pointwise) == std::vector<int32_t>{2, 3},
        "fp32 pointwise conv: no TF32 tactic (cublas-pointwise, tensor-core-*)");
    for (auto& d : pw)
    {
        d.desc.type = DataType::kHALF;
    }
    check(pointwiseBuild->configurePlugin(pw.data(), 3, &io[4], 1) == 0
            && tacticsAre(tactics(pointwise), {2, 3}, {4, 5, 6, 7}),
        "fp16 pointwise conv: both GEMMs (+ cublas-pointwise with cuBLAS, the WMMA paths on sm_80+)");
    auto* pointwiseRuntime
        = static_cast<IPluginV3OneRuntime*>(pointwise->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(pointwiseRuntime->setTactic(3) == 0 && tacticOf(pointwise) == 3, "setTactic(3) is serialised as tactic 3");
    IPluginV3* timed = creator->createPlugin("pw", pointwiseRuntime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    IPluginV3* timedClone = timed == nullptr ? nullptr : timed->clone();
    check(timed != nullptr && tacticOf(timed) == 3 && timedClone != nullptr && tacticOf(timedClone) == 3,
        "a deserialised plugin (and its clone) runs the timed tactic");
    delete timedClone;
    std::cout << "(the three rejections below log one plugin error each)" << std::endl;
    auto* timedRuntime
        = static_cast<IPluginV3OneRuntime*>(timed->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    // 8: one past the last dyconv::Algo value (kTensorCoreExperts).
    check(timedRuntime->setTactic(8) != 0 && timedRuntime->setTactic(-1) != 0 && tacticOf(timed) == 3,
        "setTactic refuses values outside dyconv::Algo");
    int32_t const badTactic = 9;
    PluginField const badTacticField("tactic", &badTactic, PluginFieldType::kINT32, 1);
    PluginFieldCollection badTacticFc{1, &badTacticField};
    check(creator->createPlugin("pw", &badTacticFc, TensorRTPhase::kRUNTIME) == nullptr,
        "a serialised tactic outside dyconv::Algo is refused");
    delete timed;
    delete pointwise;
    std::cout << "(the seven rejections below log one plugin error each)" << std::endl;
    check(build->configurePlugin(io.data(), 2, &io[4], 1) != 0, "configurePlugin rejects 2 inputs");
    auto const rejects = [&](std::vector<DynamicPluginTensorDesc> inputs, std::string const& what) {
        check(build->configurePlugin(inputs.data(), static_cast<int32_t>(inputs.size()), &io[4], 1) != 0,
            "configurePlugin rejects " + what);
    };
    rejects({io[0], tensorDesc({8, 5}, DataType::kFLOAT), io[2], io[3]}, "A with 5 experts for W's 4");
    rejects({io[0], tensorDesc({8, 4, 31}, DataType::kFLOAT), io[2], io[3]}, "A [N, K, 31] for W's M = 32");
    rejects({io[0], io[1], io[2], tensorDesc({4, 31}, DataType::kFLOAT)}, "B [4, 31] for W's M = 32");
    rejects({io[0], io[1], io[2], io[3], tensorDesc({8, 3, 5}, DataType::kFLOAT)}, "S [N, 3, 5] for a 3x3 W");
    // Dynamic batch: build dims -1, and the profile lets A's batch reach 16 where X's stops at 8.
    std::vector<DynamicPluginTensorDesc> dynamic{io[0], io[1], io[2], io[3]};
    dynamic[0].desc.dims.d[0] = dynamic[1].desc.dims.d[0] = -1;
    dynamic[0].min.d[0] = dynamic[1].min.d[0] = 1;
    check(build->configurePlugin(dynamic.data(), 4, &io[4], 1) == 0, "configurePlugin with a dynamic batch");
    dynamic[1].max.d[0] = 16;
    rejects(dynamic, "a profile whose max batch of A is not X's");

    // Run time: shapes are checked again on every change, and errors go to the context's error recorder.
    RecordingErrorRecorder recorder;
    RecorderContext context(&recorder);
    IPluginV3* attached = runtime->attachToContext(&context);
    auto* attachedRuntime
        = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::vector<PluginTensorDesc> shapesNow{odconv[0].desc, odconv[1].desc, odconv[2].desc, odconv[3].desc,
        odconv[4].desc};
    check(attachedRuntime->onShapeChange(shapesNow.data(), 5, &io[4].desc, 1) == 0 && recorder.errors.empty(),
        "onShapeChange accepts X, A, W, an empty B and S");
    shapesNow[4].dims.d[0] = 7;
    check(attachedRuntime->onShapeChange(shapesNow.data(), 5, &io[4].desc, 1) != 0 && recorder.errors.size() == 1
            && recorder.errors[0].first == ErrorCode::kINVALID_ARGUMENT
            && recorder.errors[0].second.find("S dimension 0 is 7 but must be 8") != std::string::npos,
        "onShapeChange rejects S of batch 7 for X of batch 8, through the error recorder");
    shapesNow[4].dims.d[0] = 8;
    recorder.clear();
    bool const refused = attachedRuntime->setTactic(1) == 0
        && attachedRuntime->onShapeChange(shapesNow.data(), 5, &io[4].desc, 1) != 0;
    check(refused && recorder.errors.size() == 1
            && recorder.errors[0].second.find("tactic depthwise does not apply") != std::string::npos,
        "onShapeChange refuses a tactic that does not apply (depthwise for a dense conv), through the recorder");
    delete attached;
    // Ho = 16, Wo = 29 -> 464 pixels: aggregated path, the per-sample kernels of the max batch; a reduction of
    // 8 * 3 * 3 = 72 (5 tiles of 16) is too short to split, so no split-K buffer.
    size_t const kernels = 8ull * 32 * 8 * 3 * 3 * sizeof(float);
    size_t const workspace = build->getWorkspaceSize(io.data(), 4, &io[4], 1);
    check(workspace == kernels, "workspace sized for the aggregated path's per-sample kernels");
    // enqueue is not told the workspace size: the plugin serialises what it asked TensorRT for.
    check(build->configurePlugin(io.data(), 4, &io[4], 1) == 0
            && fieldInt64(runtime->getFieldsToSerialize(), "workspace_bytes") == static_cast<int64_t>(workspace),
        "the configured workspace size is serialised");
    IPluginV3* deployed = creator->createPlugin("node", runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    auto* deployedRuntime = deployed == nullptr
        ? nullptr
        : static_cast<IPluginV3OneRuntime*>(deployed->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(deployedRuntime != nullptr
            && fieldInt64(deployedRuntime->getFieldsToSerialize(), "workspace_bytes") == static_cast<int64_t>(workspace),
        "a deserialised plugin knows the workspace size of the build");
    delete deployed;

    int32_t const badPads[] = {1, 1, 1};
    PluginField const bad("pads", badPads, PluginFieldType::kINT32, 3);
    PluginFieldCollection badFc{1, &bad};
    check(creator->createPlugin("node", &badFc, TensorRTPhase::kBUILD) == nullptr, "three pads rejected");

    // Errors go to the logger TensorRT hands over with setLoggerFinder; a later null finder changes nothing.
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
    RecordingLogger logger;
    FixedLoggerFinder finder(&logger);
    setLoggerFinder(&finder);
    setLoggerFinder(nullptr);
    creator->createPlugin("node", &badFc, TensorRTPhase::kBUILD);
    check(logger.errors.size() == 1 && logger.errors[0].find("'pads' needs 4 ints") != std::string::npos,
        "errors reach the logger finder's logger, and a null finder is ignored");

    delete restored;
    delete cloned;
    delete plugin;
    std::cout << (gFailures == 0 ? "plugin host check passed" : "plugin host check FAILED") << "\n";
    return gFailures == 0 ? 0 : 1;
}
