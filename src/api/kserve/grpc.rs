//! `inference.GRPCInferenceService` (KServe V2 over gRPC) on the drsn.v1 port: health, metadata and ModelInfer with
//! inputs raw or typed, outputs always raw (`raw_output_contents`, as Triton answers and tritonclient reads).

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::api::grpc::status::{code, code_name};
use crate::api::kserve::proto::grpc_inference_service_server::GrpcInferenceService;
use crate::api::kserve::proto::model_infer_response::InferOutputTensor;
use crate::api::kserve::proto::model_metadata_response::TensorMetadata;
use crate::api::kserve::proto::{self as pb};
use crate::api::kserve::tensor::{self, Data, Tensor};
use crate::api::kserve::{EXTENSIONS, SERVER_NAME, V2, V2Error};

#[derive(Clone)]
pub struct InferenceService(pub Arc<V2>);

/// The status for a V2 error, counted.
fn status(err: V2Error) -> Status {
    let code = err.kind().map_or(Code::NotFound, code);
    err.record(code_name(code));
    if code == Code::Internal {
        tracing::error!(error = %err, "V2 request failed");
    }
    Status::new(code, err.to_string())
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.0.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        // A model that is not here is simply not ready (tritonclient's is_model_ready then answers false).
        Ok(Response::new(pb::ModelReadyResponse {
            ready: self.0.ready() && self.0.check_model(&r.name, &r.version).is_ok(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        self.0.check_model(&r.name, &r.version).map_err(status)?;
        let card = &self.0.model().card;
        let meta = |m: crate::api::kserve::TensorMeta| TensorMetadata {
            name: m.name.into(),
            datatype: m.datatype.into(),
            shape: m.shape,
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: card.name.clone(),
            versions: vec![card.version.clone()],
            platform: "onnxruntime_onnx".into(),
            inputs: self.0.inputs().into_iter().map(meta).collect(),
            outputs: self.0.outputs().into_iter().map(meta).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let r = request.into_inner();
        self.0
            .check_model(&r.model_name, &r.model_version)
            .map_err(status)?;
        let input = input_tensor(&r).map_err(status)?;
        let wanted: Vec<String> = r.outputs.iter().map(|o| o.name.clone()).collect();
        let outputs = self.0.infer(input, &wanted).await.map_err(status)?;
        let card = &self.0.model().card;
        let raw = outputs.iter().map(|t| t.raw().into()).collect();
        Ok(Response::new(pb::ModelInferResponse {
            model_name: card.name.clone(),
            model_version: card.version.clone(),
            id: r.id,
            parameters: Default::default(),
            outputs: outputs
                .into_iter()
                .map(|t| InferOutputTensor {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                    parameters: Default::default(),
                    contents: None,
                })
                .collect(),
            raw_output_contents: raw,
        }))
    }
}

/// The one input tensor of a request, from `raw_input_contents` or typed `contents`.
fn input_tensor(r: &pb::ModelInferRequest) -> Result<Tensor, V2Error> {
    let [input] = r.inputs.as_slice() else {
        return Err(V2Error::Tensor(format!(
            "{} input tensors were sent; the model takes exactly one, `vibration`",
            r.inputs.len()
        )));
    };
    if input.datatype != "FP32" {
        return Err(V2Error::Tensor(format!(
            "input `{}` has datatype {}; the model takes FP32",
            input.name, input.datatype
        )));
    }
    let values = match (r.raw_input_contents.as_slice(), &input.contents) {
        ([raw], _) => tensor::f32_from_raw(&input.name, &input.shape, raw)?,
        ([], Some(c)) => c.fp32_contents.clone(),
        ([], None) => {
            return Err(V2Error::Tensor(format!(
                "input `{}` carries no data: set raw_input_contents or contents.fp32_contents",
                input.name
            )));
        }
        (raws, _) => {
            return Err(V2Error::Tensor(format!(
                "{} raw_input_contents for one input tensor",
                raws.len()
            )));
        }
    };
    Ok(Tensor {
        name: input.name.clone(),
        datatype: input.datatype.clone(),
        shape: input.shape.clone(),
        data: Data::F32(values),
    })
}
