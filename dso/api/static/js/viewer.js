// The 3-D view: the sample's GLB (y up, ground at y = 0) in three.js with orbit controls.
// three.js loads on first use; without WebGL the view falls back to the rendered preview.
import { call, loadImage } from './api.js';

const COLORS = { stable: 0x2e9e62, unstable: 0xd0503c };
let three = null; // the vendored module, once loaded
let state = null; // { renderer, scene, camera, controls, object }

function webglAvailable() {
  try {
    const canvas = document.createElement('canvas');
    return Boolean(canvas.getContext('webgl2') || canvas.getContext('webgl'));
  } catch {
    return false;
  }
}

async function ensureScene(container) {
  if (state) return state;
  three = three || await import('/console/vendor/three-viewer.min.js');
  const T = three;
  const renderer = new T.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  renderer.outputColorSpace = T.SRGBColorSpace;
  const scene = new T.Scene();
  scene.background = new T.Color(0xeceef2);
  scene.add(new T.HemisphereLight(0xffffff, 0x8d8d8d, 2.0));
  const sun = new T.DirectionalLight(0xffffff, 2.0);
  sun.position.set(1.5, 3, 2);
  scene.add(sun);
  const ground = new T.GridHelper(2, 20, 0x9aa3b2, 0xc9ced8);
  scene.add(ground);
  const camera = new T.PerspectiveCamera(40, 1, 0.01, 50);
  camera.position.set(1.3, 1.0, 1.5);
  const controls = new T.OrbitControls(camera, renderer.domElement);
  controls.enableDamping = true;
  container.replaceChildren(renderer.domElement);
  const resize = () => {
    const { clientWidth: w, clientHeight: h } = container;
    renderer.setSize(w, h, false);
    camera.aspect = w / Math.max(h, 1);
    camera.updateProjectionMatrix();
  };
  new ResizeObserver(resize).observe(container);
  resize();
  renderer.setAnimationLoop(() => { controls.update(); renderer.render(scene, camera); });
  state = { renderer, scene, camera, controls, object: null };
  return state;
}

function frame(T, s, object) {
  const box = new T.Box3().setFromObject(object);
  const centre = box.getCenter(new T.Vector3());
  const size = box.getSize(new T.Vector3()).length();
  s.controls.target.copy(centre);
  s.camera.position.copy(centre).add(new T.Vector3(0.9, 0.6, 1.1).multiplyScalar(Math.max(size, 0.2)));
  s.camera.updateProjectionMatrix();
}

/** Show one sample in ``container``; ``pose`` is 'upright' or 'resting'. Returns 'webgl' or 'fallback'. */
export async function showSample(container, sample, pose) {
  const meshPath = pose === 'resting' ? sample.resting_mesh_url : sample.mesh_url;
  container.dataset.sampleId = sample.id;
  container.dataset.pose = pose;
  if (!webglAvailable()) {
    const img = document.createElement('img');
    img.className = 'fallback';
    img.alt = 'rendered preview (this browser has no WebGL for the 3-D view)';
    loadImage(img, pose === 'resting' ? sample.resting_preview_url : sample.preview_url);
    container.replaceChildren(img);
    container.dataset.mode = 'fallback';
    return 'fallback';
  }
  const s = await ensureScene(container);
  const T = three;
  const buffer = await (await call(meshPath)).arrayBuffer();
  const gltf = await new T.GLTFLoader().parseAsync(buffer, '');
  const material = new T.MeshStandardMaterial({
    color: COLORS[sample.outcome] ?? COLORS.unstable, roughness: 0.6, metalness: 0.05, flatShading: true,
  });
  gltf.scene.traverse((node) => { if (node.isMesh) node.material = material; });
  if (s.object) s.scene.remove(s.object);
  s.object = gltf.scene;
  s.scene.add(s.object);
  frame(T, s, s.object);
  container.dataset.mode = 'webgl';
  container.dataset.loaded = `${sample.id}:${pose}`;
  return 'webgl';
}
