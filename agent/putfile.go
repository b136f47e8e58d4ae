package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

var (
	// errPutFile: a malformed PutFile stream (no header, bad path or mode).
	errPutFile = errors.New("invalid PutFile request")
	// errPutFileMismatch: the data differ from the header's size or digest.
	errPutFileMismatch = errors.New("uploaded data do not match the header")
)

// PutFile writes a file into the workspace: data go to a temporary file
// beside the destination, which is renamed into place only once the size
// and digest match.
func (s *Server) PutFile(stream agentv1.AgentService_PutFileServer) error {
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return toStatus(s.log, fmt.Errorf("the stream ended before its header: %w", errPutFile))
	}
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return toStatus(s.log, fmt.Errorf("the first PutFile message must be the header: %w", errPutFile))
	}
	path, mode, err := s.putTarget(h)
	if err != nil {
		return toStatus(s.log, err)
	}
	resp, err := receiveFile(stream, path, mode, h)
	if err != nil {
		return toStatus(s.log, err)
	}
	s.log.Debug("file written", "path", path, "size", resp.GetSize())
	return stream.SendAndClose(resp)
}

func (s *Server) putTarget(h *agentv1.PutFileHeader) (string, fs.FileMode, error) {
	p := h.GetPath()
	if p == "" || strings.IndexByte(p, 0) >= 0 {
		return "", 0, fmt.Errorf("path %q: must be non-empty without NUL: %w", p, errPutFile)
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(s.opts.Workdir, p)
	}
	p = filepath.Clean(p)
	mode := h.GetMode()
	if mode == 0 {
		mode = 0o644
	}
	if mode&^0o7777 != 0 {
		return "", 0, fmt.Errorf("mode %#o: only permission bits are allowed: %w", mode, errPutFile)
	}
	if d := h.GetSha256(); d != "" {
		if b, err := hex.DecodeString(d); err != nil || len(b) != sha256.Size {
			return "", 0, fmt.Errorf("sha256 %q: want 64 hex digits: %w", d, errPutFile)
		}
	}
	return p, fs.FileMode(mode), nil
}

// receiveFile streams the data into a temporary file and renames it into
// place; on any failure nothing is left at path.
func receiveFile(stream agentv1.AgentService_PutFileServer, path string, mode fs.FileMode, h *agentv1.PutFileHeader) (*agentv1.PutFileResponse, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("put %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, ".dtmux-put-*")
	if err != nil {
		return nil, fmt.Errorf("put %s: %w", path, err)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	sum := sha256.New()
	w := io.MultiWriter(tmp, sum)
	var n uint64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		data, ok := req.GetMsg().(*agentv1.PutFileRequest_Data)
		if !ok {
			return nil, fmt.Errorf("only data may follow the PutFile header: %w", errPutFile)
		}
		n += uint64(len(data.Data))
		if h.GetSize() > 0 && n > h.GetSize() {
			return nil, fmt.Errorf("more than the %d bytes announced: %w", h.GetSize(), errPutFileMismatch)
		}
		if _, err := w.Write(data.Data); err != nil {
			return nil, fmt.Errorf("put %s: %w", path, err)
		}
	}
	if h.GetSize() > 0 && n != h.GetSize() {
		return nil, fmt.Errorf("got %d bytes, %d announced: %w", n, h.GetSize(), errPutFileMismatch)
	}
	digest := hex.EncodeToString(sum.Sum(nil))
	if want := h.GetSha256(); want != "" && !strings.EqualFold(want, digest) {
		return nil, fmt.Errorf("sha256 is %s, %s announced: %w", digest, want, errPutFileMismatch)
	}
	if err := tmp.Chmod(mode); err != nil {
		return nil, fmt.Errorf("put %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("put %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		keep = true // already removed
		return nil, fmt.Errorf("put %s: %w", path, err)
	}
	keep = true
	return &agentv1.PutFileResponse{Path: path, Size: n, Sha256: digest}, nil
}
