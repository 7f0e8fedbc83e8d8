// TensorRT IPluginV3 for dyconv::DynamicConv2d version 1 (see README.md); the math lives in plugins/kernels.
#pragma once

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>
#include <vector>

namespace dyconv::trt
{

//! Node attributes, as the ONNX parser hands them over (INTS -> kINT32 fields), and the workspace size.
struct ConvAttributes
{
    int32_t strides[2]{1, 1};
    int32_t pads[4]{0, 0, 0, 0}; //!< top, left, bottom, right
    int32_t dilations[2]{1, 1};
    int32_t group{1};
    //! Not a node attribute: what getWorkspaceSize asked for at the profile's max shapes, set by configurePlugin
    //! and serialised (kINT64), because enqueue is not told how many bytes TensorRT allocated.
    int64_t workspace_bytes{0};
    //! Not a node attribute: the dyconv::Algo enqueue runs, TensorRT's pick among getValidTactics (setTactic; 0,
    //! TensorRT's default tactic, is kAuto), serialised (kINT32) so that a deserialised engine runs the timed one.
    int32_t tactic{0};
};

//! Inputs X, A, W, then optionally B and S (3, 4 or 5 inputs; an input of rank 0 counts as absent); one output Y.
//! fp32 or fp16, linear NCHW. configurePlugin (for the build shapes and the profile's min and max) and
//! onShapeChange refuse inputs whose extents disagree with X and W (see README.md, "Shape checks"). The kernel
//! algorithms are TensorRT tactics (tactic value = dyconv::Algo value), offered per configured shape and type.
class DynamicConv2dPlugin : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit DynamicConv2dPlugin(ConvAttributes const& attributes);
    DynamicConv2dPlugin(DynamicConv2dPlugin const& other);
    DynamicConv2dPlugin& operator=(DynamicConv2dPlugin const&) = delete;
    ~DynamicConv2dPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    int32_t getNbTactics() noexcept override;
    int32_t getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept override;

    // IPluginV3OneRuntime
    int32_t setTactic(int32_t tactic) noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    void bindFields();
    void setOptionalInputs(int32_t nbInputs, nvinfer1::Dims const* dims[]);
    //! To the execution context's error recorder once attached (attachToContext), else to the logger.
    void report(char const* where, char const* message) const noexcept;

    ConvAttributes mAttributes;
    bool mHasBias{false};
    bool mHasSpatial{false};
    std::vector<int32_t> mTactics; //!< valid tactics of the last configurePlugin
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr}; //!< the execution context's, not owned
    std::string mTimingCacheId;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class DynamicConv2dPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    DynamicConv2dPluginCreator();

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace dyconv::trt

//! Entry points of a dynamically loaded plugin library (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins).
extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
