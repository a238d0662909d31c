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
                Ok(FunctionSpec {
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

fn table_spec(id: &str, resource: &Value) -> Result<TableSpec> {
    let props = resource
        .get("Properties")
        .ok_or_else(|| anyhow!("no Properties"))?;
    let pairs = |value: Option<&Value>, a: &str, b: &str| -> Result<Vec<(String, String)>> {
        value
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("expected a list of {a}/{b}"))?
            .iter()
            .map(|item| {
                Ok((
                    item.get(a)
                        .and_then(Value::as_str)
                        .ok_or_else(|| anyhow!("{a} missing"))?
                        .to_string(),
                    item.get(b)
                        .and_then(Value::as_str)
                        .ok_or_else(|| anyhow!("{b} missing"))?
                        .to_string(),
                ))
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
                name: index
                    .get("IndexName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("IndexName missing"))?
                    .to_string(),
                key_schema: pairs(index.get("KeySchema"), "AttributeName", "KeyType")?,
                projection_type: index
                    .pointer("/Projection/ProjectionType")
                    .and_then(Value::as_str)
                    .unwrap_or("ALL")
                    .to_string(),
            })
        })
        .collect::<Result<_>>()?;
    let ttl = props.get("TimeToLiveSpecification");
    Ok(TableSpec {
        logical_id: id.to_string(),
        key_schema: pairs(props.get("KeySchema"), "AttributeName", "KeyType")?,
        attributes: pairs(
            props.get("AttributeDefinitions"),
            "AttributeName",
            "AttributeType",
        )?,
        global_indexes,
        stream_view_type: props
            .pointer("/StreamSpecification/StreamViewType")
            .and_then(Value::as_str)
            .map(str::to_string),
        ttl_attribute: ttl
            .filter(|t| t.get("Enabled").and_then(Value::as_bool) == Some(true))
            .and_then(|t| t.get("AttributeName"))
            .and_then(Value::as_str)
            .map(str::to_string),
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
            let (key, inner) = match name {
                "Ref" | "Condition" => (name.to_string(), inner),
                // `!GetAtt A.B` is `Fn::GetAtt: [A, B]`.
                "GetAtt" => match inner {
                    Value::String(s) => {
                        let (resource, attribute) = s
                            .split_once('.')
                            .ok_or_else(|| anyhow!("!GetAtt {s}: expected Resource.Attribute"))?;
                        (
                            "Fn::GetAtt".to_string(),
                            Value::Array(vec![resource.into(), attribute.into()]),
                        )
                    }
                    other => ("Fn::GetAtt".to_string(), other),
                },
                other => (format!("Fn::{other}"), inner),
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
        Value::Array(items) => items
            .iter()
            .map(scalar_string)
            .collect::<Result<Vec<_>>>()?
            .join(","),
        other => bail!("expected a scalar, got {other}"),
    })
}

/// Resolves intrinsic functions in long form.
struct Evaluator<'a> {
    template: &'a Template,
    ctx: &'a Context,
}

impl<'a> Evaluator<'a> {
    fn new(template: &'a Template, ctx: &'a Context) -> Self {
        Self { template, ctx }
    }

    fn parameter(&self, name: &str) -> Result<Value> {
        let declared = self
            .template
            .root
            .pointer(&format!("/Parameters/{name}"))
            .ok_or_else(|| anyhow!("no parameter {name}"))?;
        let value = match self.ctx.parameters.get(name) {
            Some(v) => v.clone(),
            None => declared
                .get("Default")
                .map(scalar_string)
                .transpose()?
                .ok_or_else(|| anyhow!("parameter {name} has no default and no value"))?,
        };
        Ok(
            if declared.get("Type").and_then(Value::as_str) == Some("CommaDelimitedList") {
                Value::Array(value.split(',').map(|s| s.trim().into()).collect())
            } else {
                Value::String(value)
            },
        )
    }

    fn condition(&self, name: &str) -> Result<bool> {
        let body = self
            .template
            .root
            .pointer(&format!("/Conditions/{name}"))
            .ok_or_else(|| anyhow!("no condition {name}"))?;
        self.boolean(body)
    }

    fn boolean(&self, value: &Value) -> Result<bool> {
        match self.eval(value)? {
            Some(Value::Bool(b)) => Ok(b),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            other => bail!("expected a condition, got {other:?}"),
        }
    }

    fn arn(&self, logical_id: &str) -> Result<String> {
        let name = Template::local_name(self.ctx, logical_id);
        let (region, account) = (&self.ctx.region, &self.ctx.account_id);
        Ok(match self.template.resource_type(logical_id) {
            Some("AWS::DynamoDB::Table") => {
                format!("arn:aws:dynamodb:{region}:{account}:table/{name}")
            }
            Some("AWS::SecretsManager::Secret") => {
                format!("arn:aws:secretsmanager:{region}:{account}:secret:{name}")
            }
            Some("AWS::SQS::Queue") => format!("arn:aws:sqs:{region}:{account}:{name}"),
            Some(other) => format!("arn:aws:local:{region}:{account}:{other}/{name}"),
            None => bail!("no resource {logical_id}"),
        })
    }

    fn get_att(&self, resource: &str, attribute: &str) -> Result<String> {
        Ok(match attribute {
            "Arn" => self.arn(resource)?,
            // The real label is a timestamp known only after creation; a fixed one stands in.
            "StreamArn" => format!("{}/stream/local", self.arn(resource)?),
            other => format!("{}:{other}", self.arn(resource)?),
        })
    }

    fn reference(&self, name: &str) -> Result<Option<Value>> {
        Ok(Some(match name {
            "AWS::NoValue" => return Ok(None),
            "AWS::Region" => self.ctx.region.clone().into(),
            "AWS::AccountId" => self.ctx.account_id.clone().into(),
            "AWS::Partition" => "aws".into(),
            "AWS::URLSuffix" => "amazonaws.com".into(),
            "AWS::StackName" => self.ctx.prefix.trim_end_matches('-').to_string().into(),
            _ if self
                .template
                .root
                .pointer(&format!("/Parameters/{name}"))
                .is_some() =>
            {
                self.parameter(name)?
            }
            _ if self.template.resource_type(name).is_some() => {
                Template::local_name(self.ctx, name).into()
            }
            _ => bail!("!Ref {name}: no such parameter or resource"),
        }))
    }

    fn sub(&self, text: &str, extra: &Map<String, Value>) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| anyhow!("unclosed ${{ in {text}"))?;
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(value) = extra.get(name) {
                let value = self
                    .eval(value)?
                    .ok_or_else(|| anyhow!("${{{name}}} is NoValue"))?;
                out.push_str(&scalar_string(&value)?);
            } else if let Some((resource, attribute)) = name.split_once('.') {
                out.push_str(&self.get_att(resource, attribute)?);
            } else {
                let value = self
                    .reference(name)?
                    .ok_or_else(|| anyhow!("${{{name}}} is NoValue"))?;
                out.push_str(&scalar_string(&value)?);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn args<'v>(&self, value: &'v Value, function: &str, n: usize) -> Result<&'v Vec<Value>> {
        match value.as_array() {
            Some(items) if items.len() == n => Ok(items),
            _ => bail!("{function} expects a list of {n}"),
        }
    }

    fn string(&self, value: &Value) -> Result<String> {
        scalar_string(
            &self
                .eval(value)?
                .ok_or_else(|| anyhow!("unexpected NoValue"))?,
        )
    }

    /// `None` is `AWS::NoValue`.
    fn eval(&self, value: &Value) -> Result<Option<Value>> {
        let Some(object) = value.as_object() else {
            return Ok(Some(match value {
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|v| self.eval(v))
                        .filter_map(Result::transpose)
                        .collect::<Result<_>>()?,
                ),
                other => other.clone(),
            }));
        };
        if object.len() == 1 {
            let (key, arg) = object.iter().next().expect("one entry");
            match key.as_str() {
                "Ref" => {
                    return self
                        .reference(arg.as_str().ok_or_else(|| anyhow!("Ref of non-string"))?);
                }
                "Condition" => {
                    let name = arg
                        .as_str()
                        .ok_or_else(|| anyhow!("Condition of non-string"))?;
                    return Ok(Some(self.condition(name)?.into()));
                }
                "Fn::If" => {
                    let items = self.args(arg, key, 3)?;
                    let name = items[0]
                        .as_str()
                        .ok_or_else(|| anyhow!("Fn::If needs a condition name"))?;
                    let chosen = if self.condition(name)? {
                        &items[1]
                    } else {
                        &items[2]
                    };
                    return self.eval(chosen);
                }
                "Fn::Equals" => {
                    let items = self.args(arg, key, 2)?;
                    return Ok(Some(
                        (self.eval(&items[0])? == self.eval(&items[1])?).into(),
                    ));
                }
                "Fn::Not" => {
                    let items = self.args(arg, key, 1)?;
                    return Ok(Some((!self.boolean(&items[0])?).into()));
                }
                "Fn::GetAtt" => {
                    let items = self.args(arg, key, 2)?;
                    return Ok(Some(
                        self.get_att(&self.string(&items[0])?, &self.string(&items[1])?)?
                            .into(),
                    ));
                }
                "Fn::Sub" => {
                    return Ok(Some(
                        match arg {
                            Value::String(text) => self.sub(text, &Map::new())?,
                            Value::Array(items) if items.len() == 2 => self.sub(
                                items[0]
                                    .as_str()
                                    .ok_or_else(|| anyhow!("Fn::Sub needs a string"))?,
                                items[1]
                                    .as_object()
                                    .ok_or_else(|| anyhow!("Fn::Sub needs a map"))?,
                            )?,
                            _ => bail!("Fn::Sub expects a string or [string, map]"),
                        }
                        .into(),
                    ));
                }
                "Fn::Split" => {
                    let items = self.args(arg, key, 2)?;
                    let delimiter = self.string(&items[0])?;
                    let source = self.string(&items[1])?;
                    return Ok(Some(Value::Array(
                        source.split(delimiter.as_str()).map(Value::from).collect(),
                    )));
                }
                "Fn::Select" => {
                    let items = self.args(arg, key, 2)?;
                    let index: usize = self.string(&items[0])?.parse()?;
                    let list = self.eval(&items[1])?.unwrap_or(Value::Array(vec![]));
                    return Ok(Some(
                        list.as_array()
                            .and_then(|l| l.get(index))
                            .cloned()
                            .ok_or_else(|| anyhow!("Fn::Select: no item {index}"))?,
                    ));
                }
                other if other.starts_with("Fn::") => bail!("{other} is not supported locally"),
                _ => {}
            }
        }
        let mut out = Map::new();
        for (k, v) in object {
            if let Some(v) = self.eval(v)? {
                out.insert(k.clone(), v);
            }
        }
        Ok(Some(Value::Object(out)))
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
  Attach: !Not [!Condition Create]
Globals:
  Function:
    Environment:
      Variables:
        T: !If [Create, !Ref Table, !Select [1, !Split ["/", !Ref Existing]]]
        S: !Sub "${Table.Arn}/index/x-${Name}"
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
        assert_eq!(
            env["S"],
            "arn:aws:dynamodb:us-east-1:123456789012:table/p-Table/index/x-n"
        );
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
        let functions = template.functions().unwrap();
        let binaries: Vec<_> = functions.iter().map(|f| f.binary.as_str()).collect();
        assert_eq!(binaries.len(), 3, "{binaries:?}");
        for binary in ["oauth-start", "oauth-callback", "event-sync"] {
            assert!(binaries.contains(&binary));
        }
    }
}
