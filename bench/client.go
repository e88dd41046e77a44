package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Client drives a CRI runtime over its socket, as kubelet does, and learns
// of container exits from the runtime's event stream.
type Client struct {
	RT    runtimeapi.RuntimeServiceClient
	Img   runtimeapi.ImageServiceClient
	conn  *grpc.ClientConn
	exits *exitWatch // nil: exits are seen by polling status
	// owns is whether Close ends exits' stream.
	owns   bool
	socket string
	seq    atomic.Int64
}

// exitWatch follows one GetContainerEvents stream and tells waiters of
// exits; clients made by Another share it, as kubelet's workers share its
// one stream.
type exitWatch struct {
	cancel  context.CancelFunc
	mu      sync.Mutex
	exited  map[string]bool
	waiters map[string]chan struct{}
}

// Dial connects to the runtime at socket. With events, the client follows
// GetContainerEvents to see exits at once; without, it polls status.
func Dial(socket string, events bool) (*Client, error) {
	c, err := dial(socket)
	if err != nil || !events {
		return c, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.RT.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		cancel()
		c.conn.Close()
		return nil, err
	}
	c.exits = &exitWatch{cancel: cancel, exited: map[string]bool{}, waiters: map[string]chan struct{}{}}
	c.owns = true
	go c.exits.follow(stream)
	return c, nil
}

// Another connects again to c's runtime; the new client sees exits the way
// c does, through c's event stream if it has one. c must outlive it.
func (c *Client) Another() (*Client, error) {
	n, err := dial(c.socket)
	if err == nil {
		n.exits = c.exits
	}
	return n, err
}

func dial(socket string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &Client{RT: runtimeapi.NewRuntimeServiceClient(conn), Img: runtimeapi.NewImageServiceClient(conn), conn: conn, socket: socket}, nil
}

func (w *exitWatch) follow(stream grpc.ServerStreamingClient[runtimeapi.ContainerEventResponse]) {
	for {
		ev, err := stream.Recv()
		if err != nil {
			return
		}
		if ev.ContainerEventType != runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT {
			continue
		}
		w.mu.Lock()
		if ch := w.waiters[ev.ContainerId]; ch != nil {
			close(ch)
			delete(w.waiters, ev.ContainerId)
		} else {
			w.exited[ev.ContainerId] = true
		}
		w.mu.Unlock()
	}
}

// Close disconnects.
func (c *Client) Close() {
	if c.owns {
		c.exits.cancel()
	}
	c.conn.Close()
}

// waitExit waits for the container's exit.
func (c *Client) waitExit(ctx context.Context, id string) error {
	w := c.exits
	if w == nil {
		for {
			st, err := c.RT.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
			if err != nil {
				return err
			}
			if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
				return nil
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	w.mu.Lock()
	if w.exited[id] {
		delete(w.exited, id)
		w.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	w.waiters[id] = ch
	w.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		w.mu.Lock()
		delete(w.waiters, id)
		w.mu.Unlock()
		return ctx.Err()
	}
}

// PodTiming is how long each step of starting a pod took.
type PodTiming struct {
	RunPodSandbox, CreateContainer, StartContainer, ToExit, Total time.Duration
	SandboxID, ContainerID                                        string
}

// PodOptions shape a benchmark pod.
type PodOptions struct {
	Image   string
	Args    []string
	Handler string
	// HostNetwork puts the pod in the node's network (containerd then
	// needs no CNI).
	HostNetwork bool
	// Wait for the container to exit; otherwise return once started.
	Wait bool
	// LogDirectory, made by the caller as kubelet does, gets each
	// container's log; empty keeps no log.
	LogDirectory string
	// Annotations are the container's (its declared ports, for one).
	Annotations map[string]string
}

// RunPod starts one pod with one container and times each call.
func (c *Client) RunPod(ctx context.Context, o PodOptions) (PodTiming, error) {
	n := c.seq.Add(1)
	name := fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), n)
	sbCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name},
		LogDirectory: o.LogDirectory,
	}
	logPath := ""
	if o.LogDirectory != "" {
		logPath = name + ".log"
	}
	if o.HostNetwork {
		sbCfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}}
	}
	var t PodTiming
	start := time.Now()
	sb, err := c.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbCfg, RuntimeHandler: o.Handler})
	if err != nil {
		return t, fmt.Errorf("RunPodSandbox: %w", err)
	}
	t.SandboxID = sb.PodSandboxId
	t.RunPodSandbox = time.Since(start)

	step := time.Now()
	ctr, err := c.RT.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sb.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata:    &runtimeapi.ContainerMetadata{Name: "app"},
			Image:       &runtimeapi.ImageSpec{Image: o.Image},
			Args:        o.Args,
			LogPath:     logPath,
			Annotations: o.Annotations,
		},
		SandboxConfig: sbCfg,
	})
	if err != nil {
		return t, fmt.Errorf("CreateContainer: %w", err)
	}
	t.ContainerID = ctr.ContainerId
	t.CreateContainer = time.Since(step)

	step = time.Now()
	if _, err := c.RT.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		return t, fmt.Errorf("StartContainer: %w", err)
	}
	t.StartContainer = time.Since(step)
	if o.Wait {
		step = time.Now()
		if err := c.waitExit(ctx, ctr.ContainerId); err != nil {
			return t, err
		}
		t.ToExit = time.Since(step)
	}
	t.Total = time.Since(start)
	return t, nil
}

// RemovePod stops and removes a pod.
func (c *Client) RemovePod(ctx context.Context, sandboxID string) error {
	if _, err := c.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandboxID}); err != nil {
		return err
	}
	_, err := c.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandboxID})
	return err
}

// Pull pulls ref.
func (c *Client) Pull(ctx context.Context, ref string) error {
	_, err := c.Img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	return err
}

// CreateTimes runs one pod and times CreateContainer of image in it
// iterations times, removing each container after; the first create,
// which warms caches, is not counted.
func (c *Client) CreateTimes(ctx context.Context, image string, iterations int, logDirectory string) ([]time.Duration, error) {
	name := fmt.Sprintf("bench-create-%d", time.Now().UnixNano())
	sbCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name},
		LogDirectory: logDirectory,
	}
	sb, err := c.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbCfg})
	if err != nil {
		return nil, fmt.Errorf("RunPodSandbox: %w", err)
	}
	defer c.RemovePod(ctx, sb.PodSandboxId)
	var out []time.Duration
	for i := 0; i < iterations; i++ {
		start := time.Now()
		ctr, err := c.RT.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: sb.PodSandboxId,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: fmt.Sprint("app-", i)},
				Image:    &runtimeapi.ImageSpec{Image: image},
				LogPath:  fmt.Sprintf("app-%d.log", i),
			},
			SandboxConfig: sbCfg,
		})
		if err != nil {
			return nil, fmt.Errorf("CreateContainer: %w", err)
		}
		if i > 0 {
			out = append(out, time.Since(start))
		}
		if _, err := c.RT.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
			return nil, fmt.Errorf("RemoveContainer: %w", err)
		}
	}
	return out, nil
}
