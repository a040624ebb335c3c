// Command argocd-health evaluates a Kubernetes object the way GitOps tools do, so that tests can
// check pgjit's health rules against real status objects with the real interpreters:
//
//	argocd-health lua SCRIPT.lua < object.json   # Argo CD: a custom Lua health check
//	argocd-health kstatus < object.json          # Flux: sigs.k8s.io/cli-utils kstatus
//
// Both print one JSON object {"status": ..., "message": ...} on stdout.
//
// The lua mode reproduces Argo CD's path for a custom check configured in argocd-cm
// (gitops-engine pkg/health.GetResourceHealth, then argo-cd util/lua VM.runLua and
// ExecuteHealthLua): an object being deleted is "Progressing"/"Pending deletion" before any
// script runs; the script runs in gopher-lua with only the package, base and table libraries
// (Argo CD opens the string library only when useOpenLibs is set for the kind, which pgjit's
// checks do not need), under a one-second deadline, with the object as the global `obj` built
// as Argo CD builds it; the returned table is encoded with gopher-json; a status outside
// Argo CD's six codes becomes "Unknown"; a script error becomes "Unknown" with the error text.
// Argo CD's "safe os" library is left out: a script needing it fails here, never the reverse.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	// Error is not part of Argo CD's result; it tells a test why a check came out Unknown.
	Error string `json:"error,omitempty"`
}

var argoHealthCodes = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(2)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: argocd-health lua SCRIPT.lua | kstatus  (object JSON on stdin)")
	}
	raw, err := io.ReadAll(stdin)
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{}
	// The unstructured decoder turns JSON integers into int64, as in Argo CD's live-state cache.
	if err := obj.UnmarshalJSON(raw); err != nil {
		return fmt.Errorf("reading the object: %w", err)
	}
	var res result
	switch {
	case args[0] == "lua" && len(args) == 2:
		script, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		res = argoHealth(obj, string(script))
	case args[0] == "kstatus" && len(args) == 1:
		computed, err := status.Compute(obj)
		if err != nil {
			return fmt.Errorf("kstatus: %w", err)
		}
		res = result{Status: computed.Status.String(), Message: computed.Message}
	default:
		return fmt.Errorf("unknown arguments %q", args)
	}
	encoder := json.NewEncoder(stdout)
	encoder.SetEscapeHTML(false) // messages are compared as text, not embedded in HTML
	return encoder.Encode(res)
}

func argoHealth(obj *unstructured.Unstructured, script string) result {
	if obj.GetDeletionTimestamp() != nil {
		return result{Status: "Progressing", Message: "Pending deletion"}
	}
	res, err := executeHealthLua(obj, script)
	if err != nil {
		return result{Status: "Unknown", Message: err.Error(), Error: err.Error()}
	}
	if !argoHealthCodes[res.Status] {
		return result{Status: "Unknown", Message: "Lua returned an invalid health status",
			Error: fmt.Sprintf("status %q", res.Status)}
	}
	return res
}

func executeHealthLua(obj *unstructured.Unstructured, script string) (result, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	// In Argo CD's order: package first, as lua.OpenLibs does.
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
			lua.LString(lib.name)); err != nil {
			return result{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj.Object))
	if err := l.DoString(script); err != nil {
		return result{}, err
	}
	returned := l.Get(-1)
	if returned.Type() != lua.LTTable {
		return result{}, fmt.Errorf("expect table output from Lua script, not %s",
			returned.Type().String())
	}
	encoded, err := luajson.Encode(returned)
	if err != nil {
		return result{}, err
	}
	var res result
	if err := json.Unmarshal(encoded, &res); err != nil {
		return result{}, err
	}
	return res, nil
}

// toLua converts decoded JSON the way Argo CD's decodeValue does: arrays become sequences,
// objects become hash tables, numbers become Lua numbers, null becomes nil.
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case json.Number:
		return lua.LString(v)
	case []interface{}:
		table := l.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(l, item))
		}
		return table
	case map[string]interface{}:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(l, item))
		}
		return table
	}
	return lua.LNil
}
