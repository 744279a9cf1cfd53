//! `inference.GRPCInferenceService` (KServe V2 over gRPC) on the drsn.v1 port: health, metadata, the repository
//! extension, and ModelInfer with inputs raw or typed, outputs always raw (`raw_output_contents`, as Triton answers
//! and tritonclient reads); and the wire check of a ModelInfer request, made before it is decoded.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::api::grpc::status::{code, code_name};
use crate::api::grpc::wire::{self, Fields, Value};
use crate::api::kserve::proto::grpc_inference_service_server::GrpcInferenceService;
use crate::api::kserve::proto::model_infer_response::InferOutputTensor;
use crate::api::kserve::proto::model_metadata_response::TensorMetadata;
use crate::api::kserve::proto::model_repository_parameter::ParameterChoice as Choice;
use crate::api::kserve::proto::repository_index_response::ModelIndex;
use crate::api::kserve::proto::{self as pb};
use crate::api::kserve::tensor::{self, Data, Tensor};
use crate::api::kserve::{EXTENSIONS, SERVER_NAME, V2Error, V2Models, repository};
use crate::error::{ServeError, quote};

/// The methods a probe calls without a token.
pub(crate) const OPEN_METHODS: &[&str] = &[
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
];

/// The path of ModelInfer, the one V2 call that carries samples.
pub(crate) const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

#[derive(Clone)]
pub(crate) struct InferenceService(pub Arc<V2Models>);

/// The status for a V2 error, counted.
pub(crate) fn status(err: V2Error) -> Status {
    let code = code(err.kind());
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
            ready: self.0.get(&r.name, &r.version).is_ok_and(|v2| v2.ready()),
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
        let v2 = self.0.get(&r.name, &r.version).map_err(status)?;
        let card = &v2.model().card;
        let meta = |m: crate::api::kserve::TensorMeta| TensorMetadata {
            name: m.name.into(),
            datatype: m.datatype.into(),
            shape: m.shape,
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: card.name.clone(),
            versions: if r.version.is_empty() {
                self.0.versions(&card.name)
            } else {
                vec![card.version.clone()]
            },
            platform: "onnxruntime_onnx".into(),
            inputs: v2.inputs().into_iter().map(meta).collect(),
            outputs: v2.outputs().into_iter().map(meta).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        // Every line this request causes says whose it was.
        let span = tracing::info_span!("request", method = "ModelInfer", peer = ?request.remote_addr(),
            model = ?request.get_ref().model_name, model_version = ?request.get_ref().model_version);
        self.infer(request.into_inner()).instrument(span).await
    }

    /// The repository index: every version served, READY or UNAVAILABLE, with its role in `reason`. One
    /// repository per server: `repository_name` is not consulted.
    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let models = repository::index(&self.0, request.get_ref().ready)
            .into_iter()
            .map(|e| ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    /// Loads the versions of a model found in the repository, with `serve` and `shadow` string parameters as the
    /// REST load's; a version that fails changes nothing and the status says why.
    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        let params = r.parameters.into_iter().map(|(key, p)| {
            let value = match p.parameter_choice {
                Some(Choice::StringParam(s)) => Ok(s),
                Some(Choice::BoolParam(b)) => Err(format!("the bool {b}")),
                Some(Choice::Int64Param(n)) => Err(format!("the number {n}")),
                Some(Choice::BytesParam(b)) => Err(format!("{} bytes", b.len())),
                None => Err("an empty value".into()),
            };
            (key, value)
        });
        let roles = repository::load_roles(params).map_err(status)?;
        repository::load(&self.0, &r.model_name, roles)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    /// Unloads every version of a model; its open streams end with a resume point. Its parameters
    /// (tritonclient's `unload_dependents`) change nothing: no model here depends on another.
    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        repository::unload(&self.0, &request.get_ref().model_name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

impl InferenceService {
    /// One V2 inference request: checked against the card, diagnosed, and its outputs encoded.
    async fn infer(
        &self,
        mut r: pb::ModelInferRequest,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let v2 = self
            .0
            .get(&r.model_name, &r.model_version)
            .map_err(status)?
            .clone();
        let input = input_tensor(&mut r).map_err(status)?;
        let wanted: Vec<String> = r.outputs.iter().map(|o| o.name.clone()).collect();
        let outputs = v2.infer(input, &wanted).await.map_err(status)?;
        let card = &v2.model().card;
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

/// The one input tensor of a request, from `raw_input_contents` or typed `contents` (moved out, not copied).
fn input_tensor(r: &mut pb::ModelInferRequest) -> Result<Tensor, V2Error> {
    let [input] = r.inputs.as_mut_slice() else {
        return Err(V2Error::Tensor(format!(
            "{} input tensors were sent; the model takes exactly one, `vibration`",
            r.inputs.len()
        )));
    };
    if input.datatype != "FP32" {
        return Err(V2Error::Tensor(format!(
            "input {} has datatype {}; the model takes FP32",
            quote(&input.name),
            quote(&input.datatype)
        )));
    }
    let typed = input
        .contents
        .take()
        .filter(|c| *c != pb::InferTensorContents::default());
    let values = match (r.raw_input_contents.as_slice(), typed) {
        ([raw], None) => tensor::f32_from_raw(&input.name, &input.shape, raw)?,
        ([], Some(c)) => c.fp32_contents,
        ([], None) => {
            return Err(V2Error::Tensor(format!(
                "input {} carries no data: set raw_input_contents or contents.fp32_contents",
                quote(&input.name)
            )));
        }
        ([_], Some(_)) => {
            return Err(V2Error::Tensor(format!(
                "input {} carries both raw_input_contents and typed contents; send one of them",
                quote(&input.name)
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
        name: std::mem::take(&mut input.name),
        datatype: std::mem::take(&mut input.datatype),
        shape: std::mem::take(&mut input.shape),
        data: Data::F32(values),
    })
}

/// Most entries of one `parameters` map.
pub(crate) const MAX_PARAMETERS: usize = 64;
/// Most dimensions of the input's shape.
pub(crate) const MAX_DIMS: usize = 8;

/// Checks an encoded ModelInferRequest on the wire, before prost decodes it, for what the model could never take:
/// more than one input or raw_input_contents, more outputs than the model has, typed contents other than FP32,
/// more than [`MAX_PARAMETERS`] parameters in a map, a shape of more than [`MAX_DIMS`] dimensions. Each repeated
/// element would otherwise become a heap object from as little as two bytes; every occurrence of a singular message
/// field is scanned, as prost merges them.
pub(crate) fn check_infer(buf: &[u8], max_outputs: usize) -> Result<(), V2Error> {
    let refuse = |text: String| Err(V2Error::Tensor(text));
    let (mut inputs, mut outputs, mut raws, mut parameters) = (0, 0, 0, 0);
    let mut dims = 0;
    for field in Fields::new(buf) {
        match field.map_err(malformed)? {
            (4, _) => parameters += 1,
            (5, Value::Len(input)) => {
                inputs += 1;
                if inputs > 1 {
                    return refuse(
                        "more than one input tensor was sent; the model takes exactly one, `vibration`".into(),
                    );
                }
                dims += check_input(input)?;
            }
            (6, Value::Len(output)) => {
                outputs += 1;
                if outputs > max_outputs {
                    return refuse(format!(
                        "more than {max_outputs} outputs were asked for; the model has {max_outputs}"
                    ));
                }
                check_parameters(output, 2, "an output")?;
            }
            (7, _) => {
                raws += 1;
                if raws > 1 {
                    return refuse(
                        "more than one raw_input_contents was sent; the model takes one input tensor".into(),
                    );
                }
            }
            _ => {}
        }
        if parameters > MAX_PARAMETERS {
            return refuse(format!(
                "more than {MAX_PARAMETERS} request parameters were sent"
            ));
        }
    }
    if dims > MAX_DIMS {
        return refuse(format!(
            "the input's shape has {dims} dimensions; the model takes 3"
        ));
    }
    Ok(())
}

/// One InferInputTensor: its dimensions counted, its parameters bounded, its contents FP32 only.
fn check_input(buf: &[u8]) -> Result<usize, V2Error> {
    let mut dims = 0;
    for field in Fields::new(buf) {
        match field.map_err(malformed)? {
            (3, value) => dims += wire::varints(value),
            (5, Value::Len(contents)) => {
                for field in Fields::new(contents) {
                    let (number, _) = field.map_err(malformed)?;
                    if number != 6 && number <= 8 {
                        return Err(V2Error::Tensor(format!(
                            "the input carries {} contents; the model takes FP32 (fp32_contents)",
                            TYPED[number as usize - 1]
                        )));
                    }
                }
            }
            _ => {}
        }
        if dims > MAX_DIMS {
            return Err(V2Error::Tensor(format!(
                "the input's shape has more than {MAX_DIMS} dimensions; the model takes 3"
            )));
        }
    }
    check_parameters(buf, 4, "the input")?;
    Ok(dims)
}

/// InferTensorContents' fields, by number.
const TYPED: [&str; 8] = [
    "bool", "int", "int64", "uint", "uint64", "fp32", "fp64", "bytes",
];

fn check_parameters(buf: &[u8], number: u32, what: &str) -> Result<(), V2Error> {
    if wire::count(buf, number).map_err(malformed)? > MAX_PARAMETERS {
        return Err(V2Error::Tensor(format!(
            "{what} has more than {MAX_PARAMETERS} parameters"
        )));
    }
    Ok(())
}

fn malformed(m: wire::Malformed) -> V2Error {
    V2Error::Serve(ServeError::from(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kserve::proto::InferTensorContents;
    use crate::api::kserve::proto::model_infer_request::{
        InferInputTensor, InferRequestedOutputTensor,
    };
    use prost::Message;

    fn request(contents: Option<InferTensorContents>, raw: bool) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "vibration".into(),
                datatype: "FP32".into(),
                shape: vec![1, 1, 2],
                parameters: Default::default(),
                contents,
            }],
            raw_input_contents: if raw {
                vec![vec![0u8; 8].into()]
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    fn fp32(values: Vec<f32>) -> Option<InferTensorContents> {
        Some(InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        })
    }

    #[test]
    fn raw_and_typed_contents_together_are_refused() {
        let e = input_tensor(&mut request(fp32(vec![1.0, 2.0]), true)).unwrap_err();
        assert!(
            e.to_string().contains("both raw_input_contents and typed"),
            "{e}"
        );
        assert!(input_tensor(&mut request(fp32(vec![1.0, 2.0]), false)).is_ok());
        assert!(input_tensor(&mut request(None, true)).is_ok());
        // An empty contents message is no typed data.
        assert!(input_tensor(&mut request(Some(Default::default()), true)).is_ok());
    }

    #[test]
    fn what_the_model_could_never_take_is_refused_on_the_wire() {
        let ok = request(fp32(vec![1.0, 2.0]), false);
        assert!(check_infer(&ok.encode_to_vec(), 6).is_ok());
        let mut two = ok.clone();
        two.inputs.push(two.inputs[0].clone());
        let mut outputs = ok.clone();
        outputs.outputs = vec![InferRequestedOutputTensor::default(); 7];
        let mut raws = ok.clone();
        raws.raw_input_contents = vec![Default::default(); 2];
        let mut typed = ok.clone();
        typed.inputs[0].contents = Some(InferTensorContents {
            bytes_contents: vec![Default::default()],
            ..Default::default()
        });
        let mut shape = ok.clone();
        shape.inputs[0].shape = vec![1; 9];
        let mut params = ok.clone();
        for i in 0..65 {
            params
                .parameters
                .insert(format!("p{i}"), pb::InferParameter::default());
        }
        for (r, text) in [
            (two, "more than one input"),
            (outputs, "more than 6 outputs"),
            (raws, "more than one raw_input_contents"),
            (typed, "bytes contents"),
            (shape, "more than 8 dimensions"),
            (params, "more than 64 request parameters"),
        ] {
            let e = check_infer(&r.encode_to_vec(), 6).unwrap_err().to_string();
            assert!(e.contains(text), "{e} / {text}");
        }
        // Typed contents in a second occurrence of the input's `contents` (prost merges the two) are scanned.
        let mut input = ok.inputs[0].encode_to_vec();
        let more = InferInputTensor {
            contents: Some(InferTensorContents {
                int_contents: vec![1],
                ..Default::default()
            }),
            ..Default::default()
        };
        input.extend(more.encode_to_vec());
        let mut merged = vec![0x2a];
        prost::encoding::encode_varint(input.len() as u64, &mut merged);
        merged.extend(input);
        let decoded = pb::ModelInferRequest::decode(merged.as_slice()).unwrap();
        assert_eq!(decoded.inputs.len(), 1, "one input, its contents merged");
        let e = check_infer(&merged, 6).unwrap_err().to_string();
        assert!(e.contains("int contents"), "{e}");
        // Eight million empty inputs stop at the second.
        let empty = [0x2au8, 0x00].repeat(8_000_000);
        assert!(
            check_infer(&empty, 6)
                .unwrap_err()
                .to_string()
                .contains("more than one input")
        );
        let e = check_infer(&[0x2a, 0x05], 6).unwrap_err();
        assert_eq!(e.reason(), "malformed");
    }
}
