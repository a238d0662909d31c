//! `template.yaml` as data: the one list of tables, secrets, functions and environment variables
//! that the local stack, the test kit and the RIE runner read, so nothing keeps a second copy.
//!
//! The YAML is read with its CloudFormation short tags (`!Ref`, `!Sub`, `!If`, `!GetAtt`, ...)
//! turned into their long forms (`Ref`, `Fn::Sub`, ...), and a small evaluator resolves the
//! intrinsic functions the template uses against local names for its resources.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Map, Value};

/// The parsed template, intrinsic functions in long form.
#[derive(Debug, Clone)]
pub struct Template {
    root: Value,
}

/// How to resolve the template's references for one local stack.
#[derive(Debug, Clone)]
pub struct Context {
    /// Parameter values that replace the template's defaults.
    pub parameters: HashMap<String, String>,
    /// Prefix of every local resource name: resource `GrantsTable` is named `{prefix}GrantsTable`.
    pub prefix: String,
    pub region: String,
    pub account_id: String,
}

/// A DynamoDB table as the template declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    pub logical_id: String,
    /// `(attribute, HASH|RANGE)`.
    pub key_schema: Vec<(String, String)>,
    /// `(attribute, S|N|B)`.
    pub attributes: Vec<(String, String)>,
    pub global_indexes: Vec<IndexSpec>,
    pub stream_view_type: Option<String>,
    pub ttl_attribute: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub name: String,
    pub key_schema: Vec<(String, String)>,
    pub projection_type: String,
}

/// A function of the template: its logical id, the cargo binary it is built from, its timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub logical_id: String,
    pub binary: String,
    pub timeout_seconds: u64,
    /// Its HTTP API routes.
    pub routes: Vec<HttpRoute>,
    /// The `Properties` of its DynamoDB stream event (the event source mapping's settings).
    pub stream_mapping: Option<Value>,
    /// Its SQS events: the queue's logical id and the event's `Properties`.
    pub queue_mappings: Vec<(String, Value)>,
}

/// An SQS queue as the template declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub logical_id: String,
    pub visibility_timeout: Option<u64>,
    /// `(dead-letter queue's logical id, maxReceiveCount)`.
    pub redrive: Option<(String, u64)>,
}

/// The `AWS::Serverless::HttpApi` as API Gateway applies it in front of the routes: its default
/// JWT authorizer and its CORS settings, resolved in a [`Context`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpApiSpec {
    pub jwt: Option<JwtAuthorizerSpec>,
    pub cors: Option<CorsSpec>,
}

/// `Auth.Authorizers.<DefaultAuthorizer>.JwtConfiguration`.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAuthorizerSpec {
    pub issuer: String,
    pub audience: Vec<String>,
}

/// `CorsConfiguration`; header names in lower case.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CorsSpec {
    pub allow_origins: Vec<String>,
    pub allow_headers: Vec<String>,
    pub allow_methods: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: Option<u64>,
}

/// One `HttpApi` event of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRoute {
    /// Upper case, e.g. `GET`.
    pub method: String,
    pub path: String,
    /// False when the route opts out of the API's default authorizer (`Auth.Authorizer: NONE`).
    pub authorized: bool,
}

impl Template {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The workspace's own `template.yaml`.
    pub fn load_workspace() -> Result<Self> {
        Self::load(&crate::paths::workspace_root().join("template.yaml"))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let yaml: serde_norway::Value = serde_norway::from_str(text)?;
        Ok(Self {
            root: long_form(yaml)?,
        })
    }

    /// The whole template as JSON, intrinsic functions in long form (`Ref`, `Fn::GetAtt`, ...),
    /// for checks that read what no accessor here covers (IAM statements, say).
    pub fn as_json(&self) -> &Value {
        &self.root
    }

    /// A parameter's `Default`, as written.
    pub fn parameter_default(&self, name: &str) -> Option<&str> {
        self.root
            .get("Parameters")?
            .get(name)?
            .get("Default")?
            .as_str()
    }

    fn resources(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.root
            .get("Resources")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
    }

    fn resource_type(&self, logical_id: &str) -> Option<&str> {
        self.root
            .get("Resources")?
            .get(logical_id)?
            .get("Type")?
            .as_str()
    }

    /// Resources of `type_` whose `Condition` (if any) holds in `ctx`.
    fn resources_of<'a>(
        &'a self,
        ctx: &'a Context,
        type_: &'a str,
    ) -> impl Iterator<Item = Result<(&'a String, &'a Value)>> + 'a {
        self.resources()
            .filter(move |(_, r)| r.get("Type").and_then(Value::as_str) == Some(type_))
            .filter_map(
                move |(id, r)| match r.get("Condition").and_then(Value::as_str) {
                    None => Some(Ok((id, r))),
                    Some(condition) => match Evaluator::new(self, ctx).condition(condition) {
                        Ok(true) => Some(Ok((id, r))),
                        Ok(false) => None,
                        Err(e) => Some(Err(e)),
                    },
                },
            )
    }

    /// Every DynamoDB table the template creates under `ctx`'s conditions.
    pub fn tables(&self, ctx: &Context) -> Result<Vec<TableSpec>> {
        self.resources_of(ctx, "AWS::DynamoDB::Table")
            .map(|entry| {
                let (id, resource) = entry?;
                table_spec(id, resource).with_context(|| format!("table {id} in template.yaml"))
            })
            .collect()
    }

    /// Every SQS queue, each dead-letter queue before the queues that name it.
    pub fn queues(&self, ctx: &Context) -> Result<Vec<QueueSpec>> {
        let mut queues = self
            .resources_of(ctx, "AWS::SQS::Queue")
            .map(|entry| {
                let (id, resource) = entry?;
                let redrive = resource
                    .pointer("/Properties/RedrivePolicy")
                    .map(|policy| -> Result<(String, u64)> {
                        let target = policy
                            .get("deadLetterTargetArn")
                            .and_then(get_att_resource)
                            .with_context(|| {
                                format!("queue {id}: deadLetterTargetArn is not !GetAtt Queue.Arn")
                            })?;
                        let count = policy
                            .get("maxReceiveCount")
                            .and_then(Value::as_u64)
                            .with_context(|| format!("queue {id}: no maxReceiveCount"))?;
                        Ok((target.to_string(), count))
                    })
                    .transpose()?;
                Ok(QueueSpec {
                    logical_id: id.clone(),
                    visibility_timeout: resource
                        .pointer("/Properties/VisibilityTimeout")
                        .and_then(Value::as_u64),
                    redrive,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        queues.sort_by_key(|q| q.redrive.is_some());
        Ok(queues)
    }

    /// The local URL of a queue (what `!Ref` gives for a queue): SQS's shape, which the SDK
    /// passes as a parameter to whatever endpoint it talks to, so it works against moto too.
    pub fn queue_url(ctx: &Context, logical_id: &str) -> String {
        format!(
            "https://sqs.{}.amazonaws.com/{}/{}",
            ctx.region,
            ctx.account_id,
            Self::local_name(ctx, logical_id)
        )
    }

    pub fn queue_arn(ctx: &Context, logical_id: &str) -> String {
        format!(
            "arn:aws:sqs:{}:{}:{}",
            ctx.region,
            ctx.account_id,
            Self::local_name(ctx, logical_id)
        )
    }

    /// Every `AWS::Serverless::Function` with its cargo binary.
    pub fn functions(&self) -> Result<Vec<FunctionSpec>> {
        let global_timeout = self
            .root
            .pointer("/Globals/Function/Timeout")
            .and_then(Value::as_u64)
            .unwrap_or(3);
        self.resources()
            .filter(|(_, r)| {
                r.get("Type").and_then(Value::as_str) == Some("AWS::Serverless::Function")
            })
            .map(|(id, r)| {
                let binary = r
                    .pointer("/Metadata/BuildProperties/Binary")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("function {id} has no Metadata.BuildProperties.Binary"))?
                    .to_string();
                let events = r
                    .pointer("/Properties/Events")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let routes = events
                    .values()
                    .filter(|e| e.get("Type").and_then(Value::as_str) == Some("HttpApi"))
                    .filter_map(|e| {
                        Some(HttpRoute {
                            method: e.pointer("/Properties/Method")?.as_str()?.to_uppercase(),
                            path: e.pointer("/Properties/Path")?.as_str()?.to_string(),
                            authorized: e.pointer("/Properties/Auth/Authorizer")
                                != Some(&Value::String("NONE".into())),
                        })
                    })
                    .collect();
                let stream_mapping = events
                    .values()
                    .find(|e| e.get("Type").and_then(Value::as_str) == Some("DynamoDB"))
                    .and_then(|e| e.get("Properties").cloned());
                let queue_mappings = events
                    .values()
                    .filter(|e| e.get("Type").and_then(Value::as_str) == Some("SQS"))
                    .filter_map(|e| {
                        let queue = get_att_resource(e.pointer("/Properties/Queue")?)?;
                        Some((queue.to_string(), e.get("Properties")?.clone()))
                    })
                    .collect();
                Ok(FunctionSpec {
                    queue_mappings,
                    logical_id: id.clone(),
                    binary,
                    timeout_seconds: r
                        .pointer("/Properties/Timeout")
                        .and_then(Value::as_u64)
                        .unwrap_or(global_timeout),
                    routes,
                    stream_mapping,
                })
            })
            .collect()
    }

    /// The HTTP API's default JWT authorizer and CORS settings, resolved in `ctx`.
    pub fn http_api(&self, ctx: &Context) -> Result<HttpApiSpec> {
        let Some(entry) = self.resources_of(ctx, "AWS::Serverless::HttpApi").next() else {
            return Ok(HttpApiSpec::default());
        };
        let (_, api) = entry?;
        let evaluator = Evaluator::new(self, ctx);
        // A list: a YAML list, `!Split` of a parameter, or a comma-delimited string.
        let list = |pointer: &str| -> Result<Vec<String>> {
            let Some(raw) = api.pointer(pointer) else {
                return Ok(Vec::new());
            };
            Ok(match evaluator.eval(raw)? {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| evaluator.string(item))
                    .collect::<Result<_>>()?,
                Some(value) => scalar_string(&value)?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
                None => Vec::new(),
            })
        };
        let jwt = match api
            .pointer("/Properties/Auth/DefaultAuthorizer")
            .and_then(Value::as_str)
        {
            None => None,
            Some(name) => {
                let config = format!("/Properties/Auth/Authorizers/{name}/JwtConfiguration");
                let issuer = api
                    .pointer(&format!("{config}/issuer"))
                    .with_context(|| format!("authorizer {name} has no JwtConfiguration.issuer"))?;
                Some(JwtAuthorizerSpec {
                    issuer: evaluator.string(issuer)?,
                    audience: list(&format!("{config}/audience"))?,
                })
            }
        };
        let cors = match api.pointer("/Properties/CorsConfiguration") {
            None => None,
            Some(config) => {
                let lower = |key: &str| -> Result<Vec<String>> {
                    Ok(list(&format!("/Properties/CorsConfiguration/{key}"))?
                        .into_iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect())
                };
                Some(CorsSpec {
                    allow_origins: list("/Properties/CorsConfiguration/AllowOrigins")?,
                    allow_headers: lower("AllowHeaders")?,
                    allow_methods: list("/Properties/CorsConfiguration/AllowMethods")?,
                    expose_headers: lower("ExposeHeaders")?,
                    allow_credentials: config.get("AllowCredentials") == Some(&Value::Bool(true)),
                    max_age: config.get("MaxAge").and_then(Value::as_u64),
                })
            }
        };
        Ok(HttpApiSpec { jwt, cors })
    }

    /// The names of the variables every function gets (`Globals`), whatever they resolve to.
    pub fn global_variables(&self) -> BTreeSet<String> {
        self.root
            .pointer("/Globals/Function/Environment/Variables")
            .and_then(Value::as_object)
            .map(|variables| variables.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The environment a function gets: `Globals` merged with its own variables, resolved in `ctx`.
    /// Variables that resolve to `AWS::NoValue` are left out, as CloudFormation does.
    pub fn environment(
        &self,
        ctx: &Context,
        function: Option<&str>,
    ) -> Result<BTreeMap<String, String>> {
        let mut raw = Map::new();
        if let Some(globals) = self
            .root
            .pointer("/Globals/Function/Environment/Variables")
            .and_then(Value::as_object)
        {
            raw.extend(globals.clone());
        }
        if let Some(own) = function.and_then(|f| {
            self.root
                .pointer(&format!("/Resources/{f}/Properties/Environment/Variables"))
                .and_then(Value::as_object)
        }) {
            raw.extend(own.clone());
        }
        let evaluator = Evaluator::new(self, ctx);
        let mut env = BTreeMap::new();
        for (name, value) in raw {
            let resolved = evaluator
                .eval(&value)
                .with_context(|| format!("environment variable {name}"))?;
            if let Some(value) = resolved {
                env.insert(name, scalar_string(&value)?);
            }
        }
        Ok(env)
    }

    /// The local physical name of a resource (what `!Ref` gives for tables and secrets here).
    pub fn local_name(ctx: &Context, logical_id: &str) -> String {
        format!("{}{logical_id}", ctx.prefix)
    }
}

/// The resource of `!GetAtt Resource.Attribute` (long form: a list, or one dotted string).
fn get_att_resource(value: &Value) -> Option<&str> {
    match value.get("Fn::GetAtt")? {
        Value::Array(parts) => parts.first()?.as_str(),
        Value::String(dotted) => dotted.split('.').next(),
        _ => None,
    }
}

fn table_spec(id: &str, resource: &Value) -> Result<TableSpec> {
    let props = resource.get("Properties").context("no Properties")?;
    let text = |value: &Value, pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    // `KeySchema` and `AttributeDefinitions` are lists of `{AttributeName, KeyType|AttributeType}`.
    let pairs = |value: &Value, list: &str, kind: &str| -> Result<Vec<(String, String)>> {
        let items = value
            .get(list)
            .and_then(Value::as_array)
            .with_context(|| format!("no {list}"))?;
        items
            .iter()
            .map(|item| {
                let pair = (
                    text(item, "/AttributeName"),
                    text(item, &format!("/{kind}")),
                );
                match pair {
                    (Some(name), Some(kind)) => Ok((name, kind)),
                    _ => bail!("{list}: {item} lacks AttributeName or {kind}"),
                }
            })
            .collect()
    };
    let global_indexes = props
        .get("GlobalSecondaryIndexes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|index| {
            Ok(IndexSpec {
                name: text(index, "/IndexName").context("IndexName missing")?,
                key_schema: pairs(index, "KeySchema", "KeyType")?,
                projection_type: text(index, "/Projection/ProjectionType").unwrap_or("ALL".into()),
            })
        })
        .collect::<Result<_>>()?;
    let ttl_enabled = props.pointer("/TimeToLiveSpecification/Enabled") == Some(&Value::Bool(true));
    Ok(TableSpec {
        logical_id: id.to_string(),
        key_schema: pairs(props, "KeySchema", "KeyType")?,
        attributes: pairs(props, "AttributeDefinitions", "AttributeType")?,
        global_indexes,
        stream_view_type: text(props, "/StreamSpecification/StreamViewType"),
        ttl_attribute: text(props, "/TimeToLiveSpecification/AttributeName")
            .filter(|_| ttl_enabled),
    })
}

/// YAML to JSON, with every short tag (`!Ref x`) turned into its long form (`{"Ref": x}`).
fn long_form(value: serde_norway::Value) -> Result<Value> {
    use serde_norway::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(n)?,
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => {
            Value::Array(items.into_iter().map(long_form).collect::<Result<_>>()?)
        }
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    other => serde_norway::to_string(&other)?.trim().to_string(),
                };
                out.insert(key, long_form(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let inner = long_form(tagged.value)?;
            // Only `Ref` keeps its name in long form; `!If` is `Fn::If`, and so on.
            let key = match name {
                "Ref" => name.to_string(),
                other => format!("Fn::{other}"),
            };
            let mut out = Map::new();
            out.insert(key, inner);
            Value::Object(out)
        }
    })
}

fn scalar_string(value: &Value) -> Result<String> {
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => bail!("expected a scalar, got {other}"),
    })
}

/// Resolves the intrinsic functions that the template's environment variables and conditions
/// use (`Ref`, `Fn::If`, `Fn::Equals`, `Fn::Not`, `Fn::Select`, `Fn::Split`); any other is an
/// error rather than a guess.
struct Evaluator<'a> {
    template: &'a Template,
    ctx: &'a Context,
}

impl<'a> Evaluator<'a> {
    fn new(template: &'a Template, ctx: &'a Context) -> Self {
        Self { template, ctx }
    }

    fn condition(&self, name: &str) -> Result<bool> {
        let body = self
            .template
            .root
            .pointer(&format!("/Conditions/{name}"))
            .ok_or_else(|| anyhow!("no condition {name}"))?;
        match self.eval(body)? {
            Some(Value::Bool(holds)) => Ok(holds),
            other => bail!("condition {name} is {other:?}, not a boolean"),
        }
    }

    /// A parameter's value (the context's, else its default) or a resource's local name.
    fn reference(&self, name: &str) -> Result<Option<Value>> {
        if name == "AWS::NoValue" {
            return Ok(None);
        }
        if let Some(declared) = self.template.root.pointer(&format!("/Parameters/{name}")) {
            let value = match self.ctx.parameters.get(name) {
                Some(value) => value.clone(),
                None => scalar_string(
                    declared
                        .get("Default")
                        .ok_or_else(|| anyhow!("parameter {name} has no default and no value"))?,
                )?,
            };
            return Ok(Some(value.into()));
        }
        Ok(Some(match self.template.resource_type(name) {
            None => bail!("!Ref {name}: no such parameter or resource"),
            Some("AWS::SQS::Queue") => Template::queue_url(self.ctx, name).into(),
            Some(_) => Template::local_name(self.ctx, name).into(),
        }))
    }

    fn string(&self, value: &Value) -> Result<String> {
        scalar_string(&self.eval(value)?.context("unexpected NoValue")?)
    }

    /// `None` is `AWS::NoValue`.
    fn eval(&self, value: &Value) -> Result<Option<Value>> {
        let Some((function, arg)) = value
            .as_object()
            .filter(|object| object.len() == 1)
            .and_then(|object| object.iter().next())
        else {
            return Ok(Some(value.clone()));
        };
        let args = |n: usize| match arg.as_array() {
            Some(items) if items.len() == n => Ok(items),
            _ => Err(anyhow!("{function} expects a list of {n}")),
        };
        Ok(Some(match function.as_str() {
            "Ref" => return self.reference(arg.as_str().context("Ref of a non-string")?),
            "Fn::If" => {
                let items = args(3)?;
                let name = items[0].as_str().context("Fn::If needs a condition name")?;
                return self.eval(&items[if self.condition(name)? { 1 } else { 2 }]);
            }
            "Fn::Equals" => {
                let items = args(2)?;
                (self.eval(&items[0])? == self.eval(&items[1])?).into()
            }
            "Fn::Not" => match self.eval(&args(1)?[0])? {
                Some(Value::Bool(holds)) => (!holds).into(),
                other => bail!("Fn::Not of {other:?}"),
            },
            "Fn::Split" => {
                let items = args(2)?;
                let delimiter = self.string(&items[0])?;
                let source = self.string(&items[1])?;
                source.split(delimiter.as_str()).map(Value::from).collect()
            }
            "Fn::Select" => {
                let items = args(2)?;
                let index: usize = self.string(&items[0])?.parse()?;
                self.eval(&items[1])?
                    .and_then(|list| list.get(index).cloned())
                    .ok_or_else(|| anyhow!("Fn::Select: no item {index}"))?
            }
            other if other.starts_with("Fn::") => bail!("{other} is not supported locally"),
            _ => value.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(parameters: &[(&str, &str)]) -> Context {
        Context {
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            prefix: "p-".into(),
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
        }
    }

    const SAMPLE: &str = r#"
Parameters:
  Existing: { Type: String, Default: "" }
  Name: { Type: String }
Conditions:
  Create: !Equals [!Ref Existing, ""]
  Attach: !Not [!Equals [!Ref Existing, ""]]
Globals:
  Function:
    Environment:
      Variables:
        T: !If [Create, !Ref Table, !Select [1, !Split ["/", !Ref Existing]]]
        N: !Ref Name
        GONE: !If [Attach, "x", !Ref AWS::NoValue]
Resources:
  Table:
    Type: AWS::DynamoDB::Table
    Condition: Create
    Properties:
      KeySchema: [{AttributeName: id, KeyType: HASH}]
      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
      StreamSpecification: {StreamViewType: NEW_AND_OLD_IMAGES}
      TimeToLiveSpecification: {AttributeName: exp, Enabled: true}
"#;

    #[test]
    fn short_tags_resolve_against_local_names() {
        let template = Template::parse(SAMPLE).unwrap();
        let env = template.environment(&ctx(&[("Name", "n")]), None).unwrap();
        assert_eq!(env["T"], "p-Table");
        assert_eq!(env["N"], "n");
        assert!(!env.contains_key("GONE"), "NoValue drops the variable");
    }

    #[test]
    fn conditions_choose_tables_and_branches() {
        let template = Template::parse(SAMPLE).unwrap();
        let attached = ctx(&[
            ("Name", "n"),
            (
                "Existing",
                "arn:aws:dynamodb:us-east-1:1:table/AppEvents/stream/2024",
            ),
        ]);
        assert!(template.tables(&attached).unwrap().is_empty());
        let env = template.environment(&attached, None).unwrap();
        assert_eq!(env["T"], "AppEvents");
        assert_eq!(env["GONE"], "x");

        let tables = template.tables(&ctx(&[("Name", "n")])).unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].ttl_attribute.as_deref(), Some("exp"));
        assert_eq!(
            tables[0].stream_view_type.as_deref(),
            Some("NEW_AND_OLD_IMAGES")
        );
    }

    #[test]
    fn a_parameter_without_value_is_an_error_naming_it() {
        let template = Template::parse(SAMPLE).unwrap();
        let error = template.environment(&ctx(&[]), None).unwrap_err();
        assert!(format!("{error:#}").contains("Name"), "{error:#}");
    }

    #[test]
    fn the_workspace_template_declares_the_specs_tables() {
        let template = Template::load_workspace().unwrap();
        let context = ctx(&[]);
        let tables = template.tables(&context).unwrap();
        let ids: Vec<_> = tables.iter().map(|t| t.logical_id.as_str()).collect();
        for id in [
            "EventsTable",
            "GrantsTable",
            "OAuthFlowsTable",
            "SyncStateTable",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let events = tables
            .iter()
            .find(|t| t.logical_id == "EventsTable")
            .unwrap();
        assert_eq!(events.global_indexes[0].name, "by_user");
        let api = template
            .http_api(&ctx(&[
                ("JwtIssuer", "https://issuer.test"),
                ("JwtAudience", "a,b"),
                (
                    "AllowedReturnOrigins",
                    "https://app.test,http://127.0.0.1:1",
                ),
            ]))
            .unwrap();
        let jwt = api.jwt.expect("the API has a JWT authorizer");
        assert_eq!(jwt.issuer, "https://issuer.test");
        assert_eq!(jwt.audience, ["a", "b"]);
        let cors = api.cors.expect("the API declares CORS");
        assert_eq!(
            cors.allow_origins,
            ["https://app.test", "http://127.0.0.1:1"]
        );
        assert!(cors.allow_headers.contains(&"authorization".to_string()));
        assert!(!cors.allow_credentials);
        let functions = template.functions().unwrap();
        let binaries: Vec<_> = functions.iter().map(|f| f.binary.as_str()).collect();
        assert_eq!(binaries.len(), 4, "{binaries:?}");
        for binary in ["oauth-start", "oauth-callback", "event-sync", "resync"] {
            assert!(binaries.contains(&binary));
        }
        let resync = functions.iter().find(|f| f.binary == "resync").unwrap();
        let queues: Vec<&str> = resync
            .queue_mappings
            .iter()
            .map(|(q, _)| q.as_str())
            .collect();
        assert_eq!(queues, ["ResyncQueue", "EventSyncFailureQueue"]);
        let declared = template.queues(&ctx(&[])).unwrap();
        let dead_letter = declared
            .iter()
            .position(|q| q.logical_id == "ResyncDeadLetterQueue");
        let resync_queue = declared.iter().position(|q| q.logical_id == "ResyncQueue");
        assert!(
            dead_letter < resync_queue,
            "a dead-letter queue comes first"
        );
        assert_eq!(
            declared[resync_queue.unwrap()].redrive,
            Some(("ResyncDeadLetterQueue".into(), 10))
        );
    }
}
