package validate

// Strict offline validation of every Kubernetes manifest under
// deploy/kubernetes: each YAML document is decoded into the typed Go object
// for its apiVersion and kind with unknown fields and duplicate keys
// rejected, so a typo'd field name fails here instead of being silently
// dropped by the API server (or by kubectl's client-side validation being
// skipped). Unknown kinds fail too. Then a few semantic checks that the
// schema cannot express.
//
// Run: cd deploy/kubernetes/validate && go test ./...

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// root is the directory walked for manifests: deploy/kubernetes.
const root = ".."

// kinds maps "apiVersion/kind" to a constructor for the typed object.
var kinds = map[string]func() any{
	"v1/ConfigMap":                       func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                          func() any { return &corev1.Secret{} },
	"v1/Service":                         func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                  func() any { return &corev1.ServiceAccount{} },
	"v1/Pod":                             func() any { return &corev1.Pod{} },
	"v1/Namespace":                       func() any { return &corev1.Namespace{} },
	"apps/v1/Deployment":                 func() any { return &appsv1.Deployment{} },
	"apps/v1/DaemonSet":                  func() any { return &appsv1.DaemonSet{} },
	"apps/v1/StatefulSet":                func() any { return &appsv1.StatefulSet{} },
	"networking.k8s.io/v1/NetworkPolicy": func() any { return &networkingv1.NetworkPolicy{} },
	"policy/v1/PodDisruptionBudget":      func() any { return &policyv1.PodDisruptionBudget{} },
}

// doc is one YAML document of a manifest file.
type doc struct {
	file  string // path relative to deploy/kubernetes
	index int    // 0-based document index in the file
	data  []byte
}

func (d doc) String() string { return fmt.Sprintf("%s[%d]", d.file, d.index) }

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocs splits a multi-document YAML stream, dropping documents that
// hold only comments and blank lines.
func splitDocs(file string, data []byte) []doc {
	var docs []doc
	for i, part := range separator.Split(string(data), -1) {
		empty := true
		for _, line := range strings.Split(part, "\n") {
			t := strings.TrimSpace(line)
			if t != "" && !strings.HasPrefix(t, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, doc{file: file, index: i, data: []byte(part)})
		}
	}
	return docs
}

// decode decodes one document strictly into its typed object.
func decode(d doc) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(d.data, &tm); err != nil {
		return nil, fmt.Errorf("%v: %w", d, err)
	}
	if tm.APIVersion == "" || tm.Kind == "" {
		return nil, fmt.Errorf("%v: apiVersion and kind are required", d)
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return nil, fmt.Errorf("%v: unknown kind %s/%s (add it to kinds in validate_test.go)", d, tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	// Not yaml.UnmarshalStrict: it ends in encoding/json, which matches
	// field names case-insensitively, so "readOnlyRootFileSystem" or
	// "targetport" would silently pass (TestTypoFieldFails). Instead, as
	// the API server does: YAML to JSON rejecting duplicate keys, then
	// sigs.k8s.io/json's case-sensitive decoder with unknown and duplicate
	// fields as errors.
	j, err := yaml.YAMLToJSONStrict(d.data)
	if err != nil {
		return nil, fmt.Errorf("%v (%s): %w", d, tm.Kind, err)
	}
	strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("%v (%s): %w", d, tm.Kind, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("%v (%s): %v", d, tm.Kind, errors.Join(strict...))
	}
	return obj, nil
}

func manifests(t *testing.T) []doc {
	t.Helper()
	var docs []doc
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			// This module's own directory holds no manifests (the negative
			// case is inline); testdata would be skipped anyway.
			if e.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		docs = append(docs, splitDocs(rel, data)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatalf("no manifests found under %s", root)
	}
	return docs
}

func TestManifestsDecodeStrictly(t *testing.T) {
	for _, d := range manifests(t) {
		obj, err := decode(d)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, err := range check(obj) {
			t.Errorf("%v: %v", d, err)
		}
	}
}

// TestExpectedRecipes guards against the walk silently finding nothing of
// a recipe (a renamed directory, a .yml typo'd as .ymal).
func TestExpectedRecipes(t *testing.T) {
	seen := map[string]int{}
	hcl := 0
	for _, d := range manifests(t) {
		obj, err := decode(d)
		if err != nil {
			continue // reported by TestManifestsDecodeStrictly
		}
		seen[fmt.Sprintf("%s %T", filepath.Dir(d.file), obj)]++
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			for k := range cm.Data {
				if strings.HasSuffix(k, ".hcl") {
					hcl++
				}
			}
		}
	}
	for _, want := range []string{
		"https-proxy *v1.ConfigMap",
		"https-proxy *v1.Deployment",
		"https-proxy *v1.Service",
		"https-proxy *v1.NetworkPolicy",
		"transparent *v1.ConfigMap",
		"transparent *v1.Pod",
	} {
		if seen[want] == 0 {
			t.Errorf("no %s found; have %v", want, seen)
		}
	}
	if hcl == 0 {
		t.Error("no ConfigMap carries an egressd policy (*.hcl key)")
	}
}

// check runs the semantic checks on one decoded object.
func check(obj any) []error {
	var errs []error
	switch o := obj.(type) {
	case *corev1.ConfigMap:
		for k, v := range o.Data {
			if strings.HasSuffix(k, ".hcl") && strings.TrimSpace(v) == "" {
				errs = append(errs, fmt.Errorf("ConfigMap %s: policy %s is empty", o.Name, k))
			}
			if strings.HasSuffix(k, ".hcl") {
				errs = append(errs, checkListens("ConfigMap "+o.Name+" "+k, v)...)
			}
		}
	case *corev1.Pod:
		errs = append(errs, checkPodSpec("Pod "+o.Name, &o.Spec)...)
		errs = append(errs, checkScrape("Pod "+o.Name, o.Annotations, &o.Spec)...)
	case *appsv1.Deployment:
		errs = append(errs, checkSelector("Deployment "+o.Name, o.Spec.Selector, o.Spec.Template.Labels)...)
		errs = append(errs, checkPodSpec("Deployment "+o.Name, &o.Spec.Template.Spec)...)
		errs = append(errs, checkScrape("Deployment "+o.Name, o.Spec.Template.Annotations, &o.Spec.Template.Spec)...)
	case *appsv1.DaemonSet:
		errs = append(errs, checkSelector("DaemonSet "+o.Name, o.Spec.Selector, o.Spec.Template.Labels)...)
		errs = append(errs, checkPodSpec("DaemonSet "+o.Name, &o.Spec.Template.Spec)...)
		errs = append(errs, checkScrape("DaemonSet "+o.Name, o.Spec.Template.Annotations, &o.Spec.Template.Spec)...)
	case *appsv1.StatefulSet:
		errs = append(errs, checkSelector("StatefulSet "+o.Name, o.Spec.Selector, o.Spec.Template.Labels)...)
		errs = append(errs, checkPodSpec("StatefulSet "+o.Name, &o.Spec.Template.Spec)...)
		errs = append(errs, checkScrape("StatefulSet "+o.Name, o.Spec.Template.Annotations, &o.Spec.Template.Spec)...)
	case *corev1.Service:
		if len(o.Spec.Selector) == 0 {
			errs = append(errs, fmt.Errorf("Service %s: no selector", o.Name))
		}
	}
	return errs
}

// listenAttr is a server block's listener setting and its address.
var listenAttr = regexp.MustCompile(`(?m)^\s*(\w+_listen)\s*=\s*"([^"]*)"`)

// checkListens: a listener on every address is written ":PORT" (or
// "[::]:PORT"), not "0.0.0.0:PORT", which egressd opens on IPv4 only: the
// kubelet's probes and a Service reach a pod on its IPv6 address in an
// IPv6 or dual-stack cluster. Loopback listeners (a sidecar's) are fine.
func checkListens(what, hcl string) []error {
	var errs []error
	for _, m := range listenAttr.FindAllStringSubmatch(hcl, -1) {
		if strings.HasPrefix(m[2], "0.0.0.0:") {
			errs = append(errs, fmt.Errorf("%s: %s = %q listens on IPv4 only; write %q to listen on every address", what, m[1], m[2], strings.TrimPrefix(m[2], "0.0.0.0")))
		}
	}
	return errs
}

// checkSelector: a workload's selector must match its own pod template,
// or the API server rejects it.
func checkSelector(what string, sel *metav1.LabelSelector, labels map[string]string) []error {
	if sel == nil || len(sel.MatchLabels) == 0 {
		return []error{fmt.Errorf("%s: spec.selector.matchLabels is empty", what)}
	}
	for k, v := range sel.MatchLabels {
		if labels[k] != v {
			return []error{fmt.Errorf("%s: selector %s=%s does not match the pod template labels %v", what, k, v, labels)}
		}
	}
	return nil
}

// pinned matches an image reference with an explicit tag other than
// "latest", or a digest.
var pinned = regexp.MustCompile(`^[^@]+:[A-Za-z0-9_][A-Za-z0-9_.-]*(@sha256:[0-9a-f]{64})?$|@sha256:[0-9a-f]{64}$`)

func checkPodSpec(what string, spec *corev1.PodSpec) []error {
	var errs []error
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	if len(spec.Containers) == 0 {
		errs = append(errs, fmt.Errorf("%s: no containers", what))
	}
	for _, c := range spec.InitContainers {
		// The API server's enum check, which a typed decode cannot do: a
		// misspelt "Always" would not start the native sidecar.
		if c.RestartPolicy != nil && *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			errs = append(errs, fmt.Errorf("%s init container %s: restartPolicy %q, want Always or none", what, c.Name, *c.RestartPolicy))
		}
	}
	for _, c := range all {
		name := fmt.Sprintf("%s container %s", what, c.Name)
		errs = append(errs, checkProbes(name, c)...)
		ref := c.Image
		if i := strings.LastIndex(ref, "/"); i >= 0 {
			ref = ref[i+1:] // a registry port ("host:5000/x") is not a tag
		}
		if !pinned.MatchString(ref) || strings.HasSuffix(strings.SplitN(ref, "@", 2)[0], ":latest") {
			errs = append(errs, fmt.Errorf("%s: image %q is not pinned by tag or digest", name, c.Image))
		}
		sc := c.SecurityContext
		if sc == nil {
			errs = append(errs, fmt.Errorf("%s: no securityContext", name))
			continue
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			errs = append(errs, fmt.Errorf("%s: allowPrivilegeEscalation must be false", name))
		}
		if sc.Capabilities == nil || !dropsAll(sc.Capabilities.Drop) {
			errs = append(errs, fmt.Errorf("%s: capabilities must drop ALL", name))
		}
		if sc.Privileged != nil && *sc.Privileged {
			errs = append(errs, fmt.Errorf("%s: privileged", name))
		}
		// egressd itself needs no privilege at all.
		if isEgressd(c) {
			if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				errs = append(errs, fmt.Errorf("%s: egressd must set runAsNonRoot", name))
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				errs = append(errs, fmt.Errorf("%s: egressd must set readOnlyRootFilesystem", name))
			}
			if sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
				errs = append(errs, fmt.Errorf("%s: egressd must add no capability, has %v", name, sc.Capabilities.Add))
			}
			if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
				errs = append(errs, fmt.Errorf("%s: egressd must set a memory limit and a CPU request", name))
			}
		}
	}
	return errs
}

// checkProbes: a probe that names a port must name one the container
// declares (the kubelet fails such a probe forever), and an egressd with
// an admin port (server.admin_listen) is probed on its health endpoints:
// readiness on /readyz, liveness on /healthz.
func checkProbes(name string, c corev1.Container) []error {
	var errs []error
	declared := map[string]bool{}
	for _, p := range c.Ports {
		if p.Name != "" {
			declared[p.Name] = true
		}
	}
	for kind, pr := range map[string]*corev1.Probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe, "startupProbe": c.StartupProbe} {
		if pr == nil {
			continue
		}
		var port *intstr.IntOrString
		switch {
		case pr.HTTPGet != nil:
			port = &pr.HTTPGet.Port
		case pr.TCPSocket != nil:
			port = &pr.TCPSocket.Port
		}
		if port != nil && port.Type == intstr.String && !declared[port.StrVal] {
			errs = append(errs, fmt.Errorf("%s: %s names port %q, which the container does not declare", name, kind, port.StrVal))
		}
	}
	if isEgressd(c) && declared["admin"] {
		// A startup probe too, when there is one: egressd's proxy
		// listeners may be on loopback (a sidecar's transparent_listen),
		// which the kubelet, dialling the pod IP, cannot reach; /readyz
		// says when every listener is served.
		wants := []struct {
			kind, path string
			probe      *corev1.Probe
		}{{"readinessProbe", "/readyz", c.ReadinessProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}}
		if c.StartupProbe != nil {
			wants = append(wants, struct {
				kind, path string
				probe      *corev1.Probe
			}{"startupProbe", "/readyz", c.StartupProbe})
		}
		for _, want := range wants {
			if want.probe == nil || want.probe.HTTPGet == nil || want.probe.HTTPGet.Path != want.path || want.probe.HTTPGet.Port.String() != "admin" {
				errs = append(errs, fmt.Errorf("%s: egressd has an admin port; its %s must be httpGet %s on port admin", name, want.kind, want.path))
			}
		}
	}
	return errs
}

// checkScrape: prometheus.io/scrape annotations must point at a port some
// container declares, with an absolute path.
func checkScrape(what string, ann map[string]string, spec *corev1.PodSpec) []error {
	if ann["prometheus.io/scrape"] != "true" {
		return nil
	}
	var errs []error
	port := ann["prometheus.io/port"]
	found := false
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		for _, p := range c.Ports {
			if strconv.Itoa(int(p.ContainerPort)) == port {
				found = true
			}
		}
	}
	if !found {
		errs = append(errs, fmt.Errorf("%s: prometheus.io/port %q is not a declared containerPort", what, port))
	}
	if p := ann["prometheus.io/path"]; !strings.HasPrefix(p, "/") {
		errs = append(errs, fmt.Errorf("%s: prometheus.io/path %q must be an absolute path", what, p))
	}
	return errs
}

func dropsAll(caps []corev1.Capability) bool {
	for _, c := range caps {
		if c == "ALL" {
			return true
		}
	}
	return false
}

func isEgressd(c corev1.Container) bool {
	return len(c.Args) > 0 && c.Args[0] == "serve" && strings.Contains(c.Image, "/egressd:")
}

// --- negative tests ---------------------------------------------------------

const typoDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: egressd
spec:
  replicas: 2
  selector:
    matchLabels: {app.kubernetes.io/name: egressd}
  template:
    metadata:
      labels: {app.kubernetes.io/name: egressd}
    spec:
      containers:
        - name: egressd
          image: ghcr.io/egressd/egressd:v0.1.0
          args: [serve]
          securityContext:
            runAsNonRoot: true
            readOnlyRootFileSystem: true   # typo: readOnlyRootFilesystem
`

func TestTypoFieldFails(t *testing.T) {
	docs := splitDocs("inline.yaml", []byte(typoDeployment))
	if len(docs) != 1 {
		t.Fatalf("got %d documents, want 1", len(docs))
	}
	_, err := decode(docs[0])
	if err == nil {
		t.Fatal("a Deployment with the typo'd field readOnlyRootFileSystem decoded without error")
	}
	if !strings.Contains(err.Error(), "readOnlyRootFileSystem") {
		t.Errorf("error does not name the unknown field: %v", err)
	}
	// The same document with the field spelled right decodes.
	fixed := strings.Replace(typoDeployment, "readOnlyRootFileSystem", "readOnlyRootFilesystem", 1)
	if _, err := decode(splitDocs("inline.yaml", []byte(fixed))[0]); err != nil {
		t.Errorf("corrected document: %v", err)
	}
}

func TestNegativeCases(t *testing.T) {
	for name, in := range map[string]string{
		"unknown kind":    "apiVersion: v1\nkind: ConfigMpa\nmetadata: {name: x}\n",
		"duplicate key":   "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n",
		"no kind":         "apiVersion: v1\nmetadata: {name: x}\n",
		"typo":            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  selector: {a: b}\n  prots: []\n",
		"misplaced field": "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  selector: {a: b}\n  ports:\n    - port: 3128\n      targetport: 3128\n",
	} {
		if _, err := decode(doc{file: name, data: []byte(in)}); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	// Semantic checks.
	bad := map[string]string{
		"unpinned image":     strings.Replace(typoDeployment, "egressd:v0.1.0", "egressd", 1),
		"latest image":       strings.Replace(typoDeployment, "egressd:v0.1.0", "egressd:latest", 1),
		"no securityContext": typoDeployment[:strings.Index(typoDeployment, "          securityContext")],
	}
	for name, in := range bad {
		in = strings.Replace(in, "readOnlyRootFileSystem", "readOnlyRootFilesystem", 1)
		obj, err := decode(doc{file: name, data: []byte(in)})
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(check(obj)) == 0 {
			t.Errorf("%s: semantic checks passed", name)
		}
	}
	ipv4Only := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  server.hcl: |\n    server {\n      admin_listen = \"0.0.0.0:9090\"\n    }\n"
	if obj, err := decode(doc{file: "IPv4-only listener", data: []byte(ipv4Only)}); err != nil || len(check(obj)) == 0 {
		t.Errorf("IPv4-only listener: semantic checks passed (%v)", err)
	}
	emptyPolicy := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  policy.hcl: \"  \\n\"\n"
	obj, err := decode(doc{file: "empty policy", data: []byte(emptyPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	if len(check(obj)) == 0 {
		t.Error("empty policy: semantic checks passed")
	}
}

// goodDeployment passes every semantic check; TestProbeAndScrapeChecks
// breaks it one way at a time.
const goodDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: egressd
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: egressd}
  template:
    metadata:
      labels: {app.kubernetes.io/name: egressd}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "9090", prometheus.io/path: /metrics}
    spec:
      containers:
        - name: egressd
          image: ghcr.io/egressd/egressd:v0.1.0
          args: [serve]
          ports: [{name: admin, containerPort: 9090}]
          readinessProbe: {httpGet: {path: /readyz, port: admin}}
          livenessProbe: {httpGet: {path: /healthz, port: admin}}
          resources: {requests: {cpu: 10m}, limits: {memory: 64Mi}}
          securityContext:
            runAsNonRoot: true
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
`

func TestProbeAndScrapeChecks(t *testing.T) {
	tests := []struct {
		name, old, new string
		want           string // "" for no error
	}{
		{"good", "", "", ""},
		{"probe on an undeclared port", "port: admin}}\n          livenessProbe", "port: metrics}}\n          livenessProbe", `readinessProbe names port "metrics"`},
		{"readiness not on /readyz", "path: /readyz", "path: /healthz", "readinessProbe must be httpGet /readyz"},
		{"liveness missing", "          livenessProbe: {httpGet: {path: /healthz, port: admin}}\n", "", "livenessProbe must be httpGet /healthz"},
		{"scrape port undeclared", `prometheus.io/port: "9090"`, `prometheus.io/port: "9091"`, `prometheus.io/port "9091" is not a declared containerPort`},
		{"scrape path relative", "prometheus.io/path: /metrics", "prometheus.io/path: metrics", "must be an absolute path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := goodDeployment
			if tc.old != "" {
				if !strings.Contains(in, tc.old) {
					t.Fatalf("%q not in the base manifest", tc.old)
				}
				in = strings.Replace(in, tc.old, tc.new, 1)
			}
			obj, err := decode(doc{file: tc.name, data: []byte(in)})
			if err != nil {
				t.Fatal(err)
			}
			errs := check(obj)
			if tc.want == "" {
				if len(errs) > 0 {
					t.Fatalf("unexpected errors: %v", errs)
				}
				return
			}
			if len(errs) == 0 || !strings.Contains(errors.Join(errs...).Error(), tc.want) {
				t.Fatalf("errors %v, want one containing %q", errs, tc.want)
			}
		})
	}
}
