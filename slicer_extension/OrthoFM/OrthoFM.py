"""OrthoFM: grades, heatmaps and labels from the OrthoFM server, where annotators work.

Kept small on purpose: the widget only wires GUI events, the logic converts between Slicer nodes and
OrthoFMLib's plain arrays, and everything else (HTTP, parsing, geometry, the annotation loop) lives in
OrthoFMLib, which is tested outside Slicer against a real server. No model runs inside Slicer.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import qt
import slicer
import vtk
from OrthoFMLib import (
    AnnotationSession,
    BackgroundJob,
    Geometry,
    LocalVolume,
    OrthoFMError,
    OrthoFMParameters,
    Segment,
    describe_result,
)
from OrthoFMLib.colors import heatmap_table, segment_color
from OrthoFMLib.workflow import remap_labelmap
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

IMAGE_ID_ATTRIBUTE = "OrthoFM.ImageId"
TASK_ATTRIBUTE = "OrthoFM.Task"


class OrthoFM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "OrthoFM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["OrthoFM developers"]
        self.parent.helpText = (
            "Connects to an OrthoFM (MONAI Label) server: shows the knee grade with per-class probabilities, "
            "abnormality heatmaps as a coloured overlay and segmentations as editable segments; fetches the next "
            "image to label, submits class labels and label maps, and starts training. See docs/slicer.md."
        )
        self.parent.acknowledgementText = "Built on MONAI Label and 3D Slicer."


# ================================================================================================ widget
class OrthoFMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the .ui to the logic; long calls run as BackgroundJobs polled by a QTimer."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.session = None
        self._job = None
        self._on_done = None
        self._timer = None
        self._last_classification = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/OrthoFM.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = OrthoFMLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._poll_job)
        self._parameters_to_gui(self.logic.load_parameters())

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.runTaskButton.connect("clicked(bool)", self.onRunTask)
        self.ui.nextSampleButton.connect("clicked(bool)", self.onNextSample)
        self.ui.submitClassButton.connect("clicked(bool)", self.onSubmitClassLabel)
        self.ui.submitSegmentationButton.connect("clicked(bool)", self.onSubmitSegmentation)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.stopTrainButton.connect("clicked(bool)", self.onStopTraining)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._update_image_label)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self.logic.set_heatmap_opacity)
        self.ui.heatmapThresholdSlider.connect("valueChanged(double)", self.logic.set_heatmap_threshold)
        self.ui.progressBar.setVisible(False)

    def cleanup(self):
        if self._job is not None:
            self._job.cancel()
        if self._timer is not None:
            self._timer.stop()
        if self.session is not None:
            self.session.client.close()  # its kept-alive connections
        self.removeObservers()

    # ------------------------------------------------------------------------------------------ parameters
    def _parameters_to_gui(self, p):
        self.ui.serverUrlLineEdit.text = p.server_url
        self.ui.tokenLineEdit.text = p.token
        self.ui.rememberTokenCheckBox.checked = p.remember_token
        self.ui.timeoutSpinBox.value = p.timeout_s
        self.ui.inferTimeoutSpinBox.value = p.infer_timeout_s
        self.ui.uploadCheckBox.checked = p.upload_to_datastore
        self.ui.heatmapOpacitySlider.value = p.heatmap_opacity
        self.ui.heatmapThresholdSlider.value = p.heatmap_threshold
        self.ui.epochsSpinBox.value = p.train_max_epochs

    def _gui_to_parameters(self):
        p = self.logic.load_parameters()
        p.server_url = self.ui.serverUrlLineEdit.text.strip()
        p.token = self.ui.tokenLineEdit.text.strip()
        p.remember_token = self.ui.rememberTokenCheckBox.checked
        p.timeout_s = self.ui.timeoutSpinBox.value
        p.infer_timeout_s = self.ui.inferTimeoutSpinBox.value
        p.upload_to_datastore = self.ui.uploadCheckBox.checked
        p.heatmap_opacity = self.ui.heatmapOpacitySlider.value
        p.heatmap_threshold = self.ui.heatmapThresholdSlider.value
        p.train_max_epochs = int(self.ui.epochsSpinBox.value)
        p.strategy = self.ui.strategyComboBox.currentText or p.strategy
        p.train_task = self.ui.trainTaskComboBox.currentText or p.train_task
        return p

    # ------------------------------------------------------------------------------------------ jobs
    def _start(self, description, function, on_done):
        if self._job is not None:
            slicer.util.warningDisplay("Another OrthoFM operation is still running; wait or press Cancel.")
            return
        self._job = BackgroundJob(description, function).start()
        self._on_done = on_done
        self.ui.statusLabel.text = description + "..."
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.setRange(0, 0)
        self.ui.cancelButton.enabled = True
        self._timer.start()

    def _poll_job(self):
        snap = self._job.snapshot()
        if snap.fraction is not None:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.value = int(100 * snap.fraction)
        self.ui.statusLabel.text = f"{snap.message} ({snap.elapsed_s:.0f} s)"
        if not snap.finished:
            return
        self._timer.stop()
        self._job, on_done = None, self._on_done
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.enabled = False
        if snap.state == "done":
            try:
                on_done(snap.result)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                self.ui.statusLabel.text = str(exc)
                slicer.util.errorDisplay(f"OrthoFM: {exc}")
        elif snap.state == "cancelled":
            self.ui.statusLabel.text = "Cancelled."
        else:
            self.ui.statusLabel.text = str(snap.error)
            slicer.util.errorDisplay(f"OrthoFM: {snap.error}")

    def onCancel(self):
        if self._job is not None:
            self._job.cancel()

    # ------------------------------------------------------------------------------------------ actions
    def onConnect(self):
        params = self._gui_to_parameters()
        if self.session is not None:
            self.session.client.close()  # reconnecting (maybe elsewhere): drop the old kept-alive connections
        try:
            self.session = AnnotationSession.from_parameters(params)
        except OrthoFMError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.logic.save_parameters(params)
        session = self.session
        self._start("Connecting", lambda cancel, progress: session.connect(cancel), self._show_server_info)

    def _show_server_info(self, info):
        self.ui.serverStatusLabel.text = f"{info.name} {info.version} - {len(info.tasks)} tasks"
        self.ui.taskListWidget.clear()
        for task in info.tasks.values():
            item = qt.QListWidgetItem(f"{task.name}  [{task.kind}]  {task.description}")
            item.setData(qt.Qt.UserRole, task.name)
            self.ui.taskListWidget.addItem(item)
        self.ui.taskListWidget.setCurrentRow(0)
        self.ui.strategyComboBox.clear()
        for name in info.strategies:
            self.ui.strategyComboBox.addItem(name)
        self.ui.trainTaskComboBox.clear()
        for name in info.trainers:
            self.ui.trainTaskComboBox.addItem(name)
        self.ui.classLabelComboBox.clear()
        for task in info.tasks_of_kind("classification")[:1]:
            for label in task.labels:
                self.ui.classLabelComboBox.addItem(label)
        for button in (self.ui.runTaskButton, self.ui.nextSampleButton, self.ui.submitClassButton,
                       self.ui.submitSegmentationButton):
            button.enabled = True
        self.ui.trainButton.enabled = bool(info.trainers)
        self.ui.stopTrainButton.enabled = bool(info.trainers)

    def _selected_task(self):
        item = self.ui.taskListWidget.currentItem()
        return None if item is None else item.data(qt.Qt.UserRole)

    def onRunTask(self):
        task, node = self._selected_task(), self.ui.inputVolumeSelector.currentNode()
        if task is None or node is None:
            slicer.util.errorDisplay("Select an image and a task first.")
            return
        volume = self.logic.local_volume(node)
        image_id = node.GetAttribute(IMAGE_ID_ATTRIBUTE)
        upload = self._gui_to_parameters().upload_to_datastore
        session = self.session

        def run(cancel, progress):
            nonlocal image_id
            if image_id is None and upload:
                image_id = session.upload_volume(volume, cancel=cancel, progress=progress)
            if image_id is not None:
                return image_id, session.run_task(task, image_id=image_id, cancel=cancel, progress=progress)
            return None, session.run_task(task, volume=volume, cancel=cancel, progress=progress)

        self._start(f"Running {task}", run, lambda out: self._show_result(node, *out))

    def _show_result(self, node, image_id, result):
        if image_id is not None:
            node.SetAttribute(IMAGE_ID_ATTRIBUTE, image_id)
            self._update_image_label(node)
        self.ui.statusLabel.text = describe_result(result)
        if result.kind == "classification":
            self._last_classification = result
            self._show_classification(result)
        elif result.kind == "heatmap":
            p = self._gui_to_parameters()
            self.logic.show_heatmap(result, node, p.heatmap_opacity, p.heatmap_threshold)
            lo, hi = result.value_range
            self.ui.heatmapThresholdSlider.minimum, self.ui.heatmapThresholdSlider.maximum = lo, hi
            self.ui.heatmapThresholdSlider.singleStep = (hi - lo) / 100 if hi > lo else 0.01
            if result.suggested_threshold is not None:
                self.ui.heatmapThresholdSlider.value = result.suggested_threshold
            score = "-" if result.score is None else f"{result.score:.3f}"
            self.ui.heatmapScoreLabel.text = f"{score} ({len(result.regions)} regions)"
        elif result.kind == "segmentation":
            seg_node = self.logic.show_segmentation(result, node)
            self.ui.segmentationSelector.setCurrentNode(seg_node)
        else:
            self.ui.otherResultLabel.text = describe_result(result)

    def _show_classification(self, result):
        self.ui.gradeLabel.text = f"{result.grade} ({result.confidence:.0%})"
        self.ui.expectedGradeLabel.text = "-" if result.expected_grade is None else f"{result.expected_grade:.2f}"
        layout = self.ui.probabilitiesFrame.layout()
        while layout.count():
            child = layout.takeAt(0)
            if child.widget():
                child.widget().deleteLater()
        for c in result.classes:
            bar = qt.QProgressBar()
            bar.setRange(0, 1000)
            bar.value = round(1000 * c.probability)
            bar.setFormat(f"{c.probability:.1%}")
            layout.addRow(c.label, bar)
        index = self.ui.classLabelComboBox.findText(result.grade)
        if index >= 0:
            self.ui.classLabelComboBox.currentIndex = index

    def onNextSample(self):
        session, strategy = self.session, self.ui.strategyComboBox.currentText or None
        dest = self.logic.download_dir()
        self._start("Fetching next sample",
                    lambda cancel, progress: session.next_sample(dest, strategy, cancel=cancel, progress=progress),
                    self._load_sample)

    def _load_sample(self, sample):
        if sample is None:
            slicer.util.infoDisplay("The server has no unlabelled image left.")
            return
        node = self.logic.load_image(sample.path)
        node.SetAttribute(IMAGE_ID_ATTRIBUTE, sample.image_id)
        node.SetName(sample.image_id)
        self.ui.inputVolumeSelector.setCurrentNode(node)
        slicer.util.setSliceViewerLayers(background=node, foreground=None, fit=True)

    def _update_image_label(self, node=None):
        node = node or self.ui.inputVolumeSelector.currentNode()
        image_id = node.GetAttribute(IMAGE_ID_ATTRIBUTE) if node else None
        self.ui.currentImageLabel.text = image_id or "(not on the server yet)"

    def _current_image_id(self):
        node = self.ui.inputVolumeSelector.currentNode()
        image_id = node.GetAttribute(IMAGE_ID_ATTRIBUTE) if node else None
        if not image_id:
            slicer.util.errorDisplay("This image is not on the server yet: run a task on it (with 'Store images' "
                                     "on) or load it with Next sample.")
        return image_id

    def onSubmitClassLabel(self):
        image_id, label = self._current_image_id(), self.ui.classLabelComboBox.currentText
        if not image_id:
            return
        session, result = self.session, self._last_classification
        self._start(f"Submitting class {label}",
                    lambda cancel, progress: session.submit_class_label(image_id, label, result=result, cancel=cancel),
                    lambda reply: setattr(self.ui.statusLabel, "text", f"Saved class '{label}' for {image_id}."))

    def onSubmitSegmentation(self):
        image_id = self._current_image_id()
        seg_node = self.ui.segmentationSelector.currentNode()
        ref = self.ui.inputVolumeSelector.currentNode()
        if not image_id or seg_node is None:
            if image_id:
                slicer.util.errorDisplay("Select the segmentation to submit.")
            return
        labelmap, geometry, segments = self.logic.export_labelmap(seg_node, ref)
        session, task = self.session, seg_node.GetAttribute(TASK_ATTRIBUTE)
        if task and session.info is not None and task in session.info.tasks:
            labelmap, segments = remap_labelmap(labelmap, segments, session.info.tasks[task].label_ids)
        self._start("Submitting segmentation",
                    lambda cancel, progress: session.submit_segmentation(image_id, labelmap, geometry, segments,
                                                                         cancel=cancel, progress=progress),
                    lambda reply: setattr(self.ui.statusLabel, "text", f"Saved segmentation for {image_id}."))

    def onTrain(self):
        p = self._gui_to_parameters()
        self.logic.save_parameters(p)
        session, task = self.session, self.ui.trainTaskComboBox.currentText

        def train(cancel, progress):
            def on_status(status):
                details = status.get("details") or []
                progress(0, None, f"Training {task}: {status.get('status')} {details[-1] if details else ''}")
            return session.train(task, epochs=p.train_max_epochs, on_status=on_status, cancel=cancel)

        self._start(f"Training {task}", train,
                    lambda final: setattr(self.ui.statusLabel, "text", f"Training {task}: {final.get('status')}"))

    def onStopTraining(self):
        if self.session is None:
            return
        try:
            self.session.client.train_stop()
            self.ui.statusLabel.text = "Training stopped."
        except OrthoFMError as exc:
            slicer.util.errorDisplay(str(exc))


# ================================================================================================ logic
class OrthoFMLogic(ScriptedLoadableModuleLogic):
    """Slicer nodes <-> OrthoFMLib arrays; display of results. No HTTP here."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.heatmap_node = None

    # ------------------------------------------------------------------------------------------ settings
    @staticmethod
    def load_parameters():
        settings = qt.QSettings()
        values = {key: settings.value(key) for key in settings.allKeys() if key.startswith("OrthoFM/")}
        return OrthoFMParameters.from_settings(values)

    @staticmethod
    def save_parameters(parameters):
        settings = qt.QSettings()
        if not parameters.remember_token:
            settings.remove("OrthoFM/token")
        for key, value in parameters.to_settings().items():
            settings.setValue(key, value)

    @staticmethod
    def download_dir():
        path = os.path.join(slicer.app.temporaryPath, "OrthoFM")
        os.makedirs(path, exist_ok=True)
        return path

    @staticmethod
    def load_image(path):
        """A downloaded image file, or a folder holding one DICOM series, as a volume node."""
        if not os.path.isdir(path):
            return slicer.util.loadVolume(str(path))
        from DICOMLib import DICOMUtils

        loaded = []
        with DICOMUtils.TemporaryDICOMDatabase() as db:
            DICOMUtils.importDicom(str(path), db)
            for patient in db.patients():
                loaded.extend(DICOMUtils.loadPatientByUID(patient))
        volumes = [slicer.mrmlScene.GetNodeByID(i) for i in loaded]
        volumes = [v for v in volumes if v is not None and v.IsA("vtkMRMLScalarVolumeNode")]
        if not volumes:
            raise OrthoFMError(f"No image could be loaded from the DICOM files in {path}")
        return volumes[0]

    # ------------------------------------------------------------------------------------------ nodes -> arrays
    @staticmethod
    def ijk_to_ras(node):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return slicer.util.arrayFromVTKMatrix(m)

    def local_volume(self, node):
        array = slicer.util.arrayFromVolume(node)
        if array.ndim == 4:  # colour radiograph: use luminance
            array = array[..., :3].mean(axis=-1)
        return LocalVolume(node.GetName(), np.array(array), Geometry.from_ijk_to_ras(self.ijk_to_ras(node)))

    def export_labelmap(self, segmentation_node, reference_node):
        """(labelmap (K, J, I), geometry, segments) of all segments, on the reference image's grid."""
        segmentation = segmentation_node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        id_array = vtk.vtkStringArray()
        for segment_id in ids:
            id_array.InsertNextValue(segment_id)
        labelmap_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentation_node, id_array, labelmap_node, reference_node)
            array = np.array(slicer.util.arrayFromVolume(labelmap_node))
            geometry = Geometry.from_ijk_to_ras(self.ijk_to_ras(labelmap_node))
        finally:
            slicer.mrmlScene.RemoveNode(labelmap_node)
        segments = []
        for value, segment_id in enumerate(ids, start=1):
            segment = segmentation.GetSegment(segment_id)
            segments.append(Segment(segment.GetName(), value, tuple(segment.GetColor()), 0, segment_id))
        return array, geometry, segments

    # ------------------------------------------------------------------------------------------ display
    def show_heatmap(self, result, reference_node, opacity, threshold):
        name = f"{reference_node.GetName()}_{result.task}"
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, result.array)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(result.geometry.ijk_to_ras()))
        node.SetAttribute(TASK_ATTRIBUTE, result.task)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(self._heatmap_colors().GetID())
        lo, hi = result.value_range
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(lo, hi if hi > lo else lo + 1e-6)
        self.heatmap_node = node
        self.set_heatmap_threshold(threshold)
        slicer.util.setSliceViewerLayers(background=reference_node, foreground=node, foregroundOpacity=opacity)
        return node

    def set_heatmap_opacity(self, opacity):
        slicer.util.setSliceViewerLayers(foregroundOpacity=float(opacity))

    def set_heatmap_threshold(self, threshold):
        node = self.heatmap_node
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
            return
        display = node.GetDisplayNode()
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(float(threshold))
        display.SetUpperThreshold(float(np.finfo(np.float32).max))

    @staticmethod
    def _heatmap_colors():
        node = slicer.mrmlScene.GetFirstNodeByName("OrthoFMHeatmap")
        if node is not None:
            return node
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "OrthoFMHeatmap")
        node.SetTypeToUser()
        table = heatmap_table(256)
        node.SetNumberOfColors(len(table))
        node.SetNamesInitialised(True)
        for i, (r, g, b, a) in enumerate(table):
            node.SetColor(i, f"{i}", r, g, b, a)
        return node

    def show_segmentation(self, result, reference_node):
        name = f"{reference_node.GetName()}_{result.task}"
        if result.is_seg_nrrd:  # a Slicer segmentation file: let Slicer read names, colours and layers
            path = os.path.join(self.download_dir(), f"{name}.seg.nrrd")
            with open(path, "wb") as f:
                f.write(result.file_data)
            node = slicer.util.loadSegmentation(path)
            node.SetName(name)
        else:
            node = self._import_labelmap(result, name)
        node.SetAttribute(TASK_ATTRIBUTE, result.task)
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        return node

    def _import_labelmap(self, result, name):
        array, segments = result.labelmap()
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name}_labels")
        colors = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{name}_colors")
        try:
            slicer.util.updateVolumeFromArray(labelmap, array.astype(np.int32))
            labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(result.geometry.ijk_to_ras()))
            colors.SetTypeToUser()
            colors.SetNumberOfColors(max([s.value for s in segments] + [0]) + 1)
            colors.SetNamesInitialised(True)
            colors.SetColor(0, "background", 0, 0, 0, 0)
            for s in segments:
                r, g, b = s.color or segment_color(s.name, s.value)
                colors.SetColor(s.value, s.name, r, g, b, 1.0)
            labelmap.CreateDefaultDisplayNodes()
            labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
            node = slicer.mrmlScene.GetFirstNodeByName(name)
            if node is None or not node.IsA("vtkMRMLSegmentationNode"):
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            else:
                node.GetSegmentation().RemoveAllSegments()
            slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, node)
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)
            slicer.mrmlScene.RemoveNode(colors)
        return node


# ================================================================================================ test
class OrthoFMTest(ScriptedLoadableModuleTest):
    """Runs the whole annotation loop against a running server (ORTHOFM_TEST_SERVER or the saved URL).

    Start a server first (e.g. ``orthofm serve``); the test fails with the connection message if none answers.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_OrthoFM_loop()

    def test_OrthoFM_loop(self):
        logic = OrthoFMLogic()
        params = logic.load_parameters()
        params.server_url = os.environ.get("ORTHOFM_TEST_SERVER", params.server_url)
        params.train_max_epochs = 1
        session = AnnotationSession.from_parameters(params)
        info = session.connect()
        self.delayDisplay(f"Connected to {info.name}: tasks {', '.join(info.tasks)}")

        sample = session.next_sample(tempfile.mkdtemp(prefix="OrthoFMTest"), params.strategy)
        self.assertIsNotNone(sample, "the server has no unlabelled image to test with")
        volume_node = logic.load_image(sample.path)
        volume_node.SetAttribute(IMAGE_ID_ATTRIBUTE, sample.image_id)
        volume = logic.local_volume(volume_node)

        for task in info.tasks.values():
            try:
                result = session.run_task(task.name, image_id=sample.image_id)
            except OrthoFMError as exc:
                if exc.status != 409:  # 409: the task needs labels/training first (e.g. no knee_kl head yet)
                    raise
                self.delayDisplay(f"{task.name}: not ready on this server ({exc})")
                continue
            self.delayDisplay(describe_result(result))
            if result.kind == "heatmap":
                heat_node = logic.show_heatmap(result, volume_node, 0.5, 0.0)
                np.testing.assert_allclose(logic.ijk_to_ras(heat_node), logic.ijk_to_ras(volume_node), atol=1e-4)
                self.assertEqual(slicer.util.arrayFromVolume(heat_node).shape, volume.array.shape)
            elif result.kind == "segmentation":
                seg_node = logic.show_segmentation(result, volume_node)
                labelmap, geometry, segments = logic.export_labelmap(seg_node, volume_node)
                labelmap, segments = remap_labelmap(labelmap, segments, task.label_ids)
                reply = session.submit_segmentation(sample.image_id, labelmap, geometry, segments)
                self.assertEqual(reply.get("image"), sample.image_id)
            elif result.kind == "classification":
                reply = session.submit_class_label(sample.image_id, result.grade, result=result)
                self.assertEqual(reply.get("image"), sample.image_id)

        for trainer in info.trainers:
            # DONE, or ERROR with the server's reason (e.g. too few labels yet): the loop itself must work
            record = session.train(trainer, wait=False)
            final = session.client.wait_for_training(record.get("id"), poll_interval=2.0, timeout=600)
            reason = (final.get("details") or [""])[-1]
            self.delayDisplay(f"Training {trainer}: {final.get('status')} {reason}")
            self.assertIn(final.get("status"), ("DONE", "ERROR"))
        self.delayDisplay("OrthoFM loop test passed")
